// The README's kafkajs example (env BROKERS, REGISTRY, TOPIC, SCHEMA; examples/producers/check.py kafkajs runs it)
const fs = require('fs')
const { Kafka, Partitioners } = require('kafkajs')
const { SchemaRegistry, SchemaType } = require('@kafkajs/confluent-schema-registry')

async function main() {
  const topic = process.env.TOPIC
  const kafka = new Kafka({ brokers: process.env.BROKERS.split(',') })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, idempotent: true })
  const registry = new SchemaRegistry({ host: process.env.REGISTRY })
  const { id } = await registry.register(
    { type: SchemaType.AVRO, schema: fs.readFileSync(process.env.SCHEMA, 'utf8') },
    { subject: `${topic}-value` })
  const change = (docId, version, text) => ({
    doc_id: docId, op: 'UPSERT', version, event_time: Date.now(), text,
    metadata: { lang: 'en' }, event_id: null, source: 'kb-service', content_type: 'text/plain' })
  await producer.connect()
  const messages = []
  for (let i = 0; i < 40; i++) messages.push({ key: `kb-${i}`, value: await registry.encode(id, change(`kb-${i}`, 7, `Article ${i}`)) })
  messages.push({ key: 'kb-3', value: null })  // tombstone
  const res = await producer.send({ topic, acks: -1, messages })
  console.log(JSON.stringify(res))
  await producer.disconnect()
}
main().catch(e => { console.error(e); process.exit(1) })
