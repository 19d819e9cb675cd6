// The README's Java example: kafka-clients + Apache Avro's single-object encoding, no registry
// (args: bootstrap servers, topic, schemas/document_change.avsc; examples/producers/check.py java runs it)
import java.io.File;
import java.util.Map;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Produce {
    public static void main(String[] args) throws Exception {
        Schema schema = new Schema.Parser().parse(new File(args[2]));
        BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);   // acks=all, ordered retries
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);   // key = doc_id (UTF-8)
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(p)) {  // default partitioner: murmur2
            for (int i = 0; i < 40; i++) {
                GenericRecord r = new GenericData.Record(schema);
                r.put("doc_id", "kb-" + i);
                r.put("op", new GenericData.EnumSymbol(schema.getField("op").schema(), "UPSERT"));
                r.put("version", 7L);
                r.put("event_time", System.currentTimeMillis());
                r.put("text", "Article " + i);
                r.put("metadata", Map.of("lang", "en"));
                r.put("source", "kb-service");
                r.put("content_type", "text/plain");
                byte[] value = encoder.encode(r).array();   // C3 01 + CRC-64-AVRO fingerprint + body
                producer.send(new ProducerRecord<>(args[1], "kb-" + i, value)).get();  // .get(): delivery errors throw
            }
            producer.send(new ProducerRecord<>(args[1], "kb-3", null)).get();   // tombstone
        }
    }
}
