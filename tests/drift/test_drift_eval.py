"""Smoke test of the evaluation harness on synthetic vectors (no corpus, no model)."""
import json

import pytest

from load import drift_eval, drift_split


def test_harness_quick_synthetic(tmp_path, capsys):
    out = tmp_path / "drift.json"
    rc = drift_eval.main(["--synthetic", "--quick", "--runs", "2", "--free-events", "5000", "--lead", "1000",
                          "--horizon", "1500", "--ramp", "1000", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in doc["results"]}
    assert {"free:reuters", "free-topic:reuters:earn", "free-pool1000:reuters", "topic:reuters:corporate->macro",
            "encoder:reuters:fp32->int8", "tokenizer:reuters:trunc16", "domain:reuters->fortunes",
            "boilerplate:reuters:100%"} <= set(rows)
    # strong synthetic changes are found in every run
    for name in ("topic:reuters:corporate->macro", "tokenizer:reuters:trunc16", "domain:reuters->fortunes"):
        assert rows[name]["detected"] == 2 and rows[name]["missed"] == 0, rows[name]
    assert 4900 <= rows["free:reuters"]["events"] <= 5000  # live events (the batch ending the warm-up is not timed)
    assert doc["summary"]["us_per_vector"] > 0
    assert "scenario" in capsys.readouterr().out


def test_scenarios_of_the_held_out_part_use_every_pool():
    from load.drift_data import synthetic_pools

    pools = synthetic_pools(n_docs=3000)
    pools["20ng"] = pools["reuters"]
    names = [s.name for s in drift_eval.scenarios(pools, 1000)]
    assert "free-topic:20ng:earn" in names and "encoder:20ng:int8->fp32" in names
    assert len(names) == len(set(names))
    # the parts' stream seeds differ (fixed in load/drift_split.py before tuning)
    assert drift_eval._seed("holdout", 0) == drift_split.HOLDOUT_RUN_SEED != drift_eval._seed("tune", 0)


@pytest.mark.parametrize("part, seed, corpora, pools", [
    ("fresh2", drift_split.FRESH2_RUN_SEED, ("wordnet", "python-docs"), ("wordnet", "pydocs")),
    ("fresh3", drift_split.FRESH3_RUN_SEED, ("bible-kjv", "perl-doc"), ("kjv", "perldoc")),
    ("fresh4", drift_split.FRESH4_RUN_SEED, ("postgresql-docs", "debian-handbook"), ("pgdocs", "dhandbook")),
    ("fresh5", drift_split.FRESH5_RUN_SEED, ("linux-docs", "r-manuals"), ("linuxdoc", "rman"))])
def test_scenarios_of_the_later_fresh_parts(part, seed, corpora, pools):
    """The second to fifth fresh parts' pools get the fresh part's rules, topics included."""
    from load.drift_data import synthetic_pools

    synth = synthetic_pools(n_docs=3000)
    a, b = pools
    names = set(s.name for s in drift_eval.scenarios({a: synth["reuters"], b: synth["reuters"]}, 1000))
    for p in pools:
        assert {f"free:{p}", f"free-topic:{p}:earn", f"free-pool1000:{p}", f"bursty:{p}", f"topic:{p}:mix->earn",
                f"topic:{p}:earn->acq", f"encoder:{p}:int8->fp32", f"bursty-topic:{p}:mix->earn"} <= names
    assert {f"domain:{a}->{b}", f"domain:{b}->{a}"} <= names
    assert drift_eval._seed(part, 0) == seed
    assert {drift_split.part(c, "x") for c in corpora} == {part}


WNDB = """  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
02084071 05 n 02 dog 0 domestic_dog 0 003 @ 02083346 n 0000 ~ 01322604 n 0000 #m 02083863 n 0000 | a member of the genus Canis that has been domesticated by man since prehistoric times; "the dog barked all night"
02121620 05 n 01 cat 0 000 | feline mammal usually having thick soft fur
00001740 00 a 01 able(a) 0 002 ! 00002098 a 0101 = 05207437 n 0000 | (usually followed by `to') having the necessary means or skill
"""

RST = """Heading of the page
===================

.. module:: spam
   :synopsis: A module that does many things with spam and eggs for everybody.

This first paragraph has enough words to be kept by the parser, with a :func:`spam.eggs` role, a
``literal``, a `link <https://example.org>`_ and *emphasis* in it, and it ends with a colon, so::

   this is a literal block with enough words to be kept were it prose, but it is code and
   it must be dropped by the parser whatever its length happens to be in the end

.. code-block:: python

   x = 1  # a code block of plenty of words that a careless parser would take for a paragraph of prose

.. function:: eggs(n)

   Return *n* eggs. This paragraph is indented under a directive whose body is prose, and it is long
   enough to be kept as one of the paragraphs of the documentation.

.. This is a comment that is long enough to be kept were it prose, but comments are not shown to
   readers, so it is dropped like the code and the literal blocks above and below it.

* a list item that is long enough to be kept were it prose, but list items are not paragraphs of prose.
"""


def test_fresh2_loaders_parse_their_formats(tmp_path):
    from load import drift_data

    wn = tmp_path / "wordnet" / "x" / "usr" / "share" / "wordnet"
    wn.mkdir(parents=True)
    (wn / "data.noun").write_text(WNDB)
    for pos in ("verb", "adj", "adv"):
        (wn / f"data.{pos}").write_text("")
    texts, labels = drift_data.wordnet(tmp_path)
    assert texts == ['dog: a member of the genus Canis that has been domesticated by man since prehistoric times; '
                     '"the dog barked all night"', "cat: feline mammal usually having thick soft fur",
                     "able: (usually followed by `to') having the necessary means or skill"]
    assert labels == ["noun.animal", "noun.animal", "adj.all"]

    src = tmp_path / "python-docs" / "x" / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    (src / "library").mkdir(parents=True)
    (src / "library" / "spam.rst.txt").write_text(RST)
    (src / "about.rst.txt").write_text("A page at the top of the documentation, with a single paragraph of "
                                       "prose that holds more than twenty words in all, to be labelled root.\n")
    texts, labels = drift_data.python_docs(tmp_path)
    assert labels == ["root", "library", "library"]
    assert texts[1] == ("This first paragraph has enough words to be kept by the parser, with a spam.eggs role, a "
                        "literal, a link and emphasis in it, and it ends with a colon, so:")
    assert texts[2].startswith("Return n eggs. This paragraph is indented under a directive")


def test_swap_snr_matches_its_formula():
    """load.drift_snr's per-event SNR is |delta|^2 / sqrt(2 tr(C^2)): for isotropic rows of variance
    s2 per axis in d dimensions, |delta|^2 / (s2 sqrt(2 d))."""
    import numpy as np

    from load.drift_snr import swap_snr

    rng = np.random.default_rng(3)
    d, s, n = 50, 0.1, 20_000
    a = rng.normal(scale=s, size=(n, d))
    b = rng.normal(scale=s, size=(n, d))
    b[:, 0] += 0.05
    expected = 0.05**2 / (s**2 * np.sqrt(2 * d))  # 0.025
    assert abs(swap_snr(a, b) - expected) < 0.1 * expected
    assert swap_snr(a, rng.normal(scale=s, size=(n, d))) < 0.1 * expected  # no shift: ~0



def test_topic_views_see_a_topic_apart_and_not_a_random_part_of_the_mix():
    """load.drift_topics: a topic that sits apart in the head axes (its own cluster) is seen by the
    Fisher view, the cluster histogram and the head scan; a random part of the mix by none."""
    import numpy as np

    from load.drift_topics import fisher_shift, head_growth, histogram_growth

    rng = np.random.default_rng(8)
    centres = rng.normal(size=(6, 24)) * 3
    lab = rng.integers(6, size=8000)
    v = centres[lab] + rng.normal(size=(8000, 24))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    fit, held, rest = v[:1500], v[1500:2500], np.arange(2500, 8000)
    topic, other = v[rest[lab[rest] == 0]], v[rng.choice(rest, 900, replace=False)]
    assert fisher_shift(v[rest], topic) > 1.5 and abs(fisher_shift(v[rest], other)) < 0.2
    assert histogram_growth(fit, held, topic, 8) > 0.5 and histogram_growth(fit, held, other, 8) < 0.05
    assert head_growth(fit, held, topic, 8) > 0.3 and head_growth(fit, held, other, 8) < 0.02

POD = """=head1 NAME

perlspam - how to cook spam

=head1 DESCRIPTION

This ordinary paragraph is long enough to be kept: it has B<bold> words, C<< code >> in it, a
link to L<the manual|perlfunc/open>, another to L<https://www.perl.org/> and an E<gt> escape, so
it reads as plain text once the parser is done with it.

    my $code = "a verbatim paragraph, indented, is code and is dropped whatever its length";
    print $code for 1 .. 100;

=begin html

<p>This paragraph is inside a begin/end block and is dropped although it is long enough to be kept.</p>

=end html

=item A command paragraph, however long, is not prose: it is dropped with the other commands here.

Short one.
"""


def test_fresh3_loaders_parse_their_formats(tmp_path, monkeypatch):
    import subprocess

    from load import drift_data

    pod = tmp_path / "perl-doc" / "x" / "usr" / "share" / "perl" / "5.36.0" / "pod"
    pod.mkdir(parents=True)
    (pod / "perl5360delta.pod").write_text(POD)
    texts, labels = drift_data.perl_docs(tmp_path)
    assert labels == ["perldelta"]
    assert texts == ["This ordinary paragraph is long enough to be kept: it has bold words, code in it, a link to "
                     "the manual, another to https://www.perl.org/ and an > escape, so it reads as plain text once "
                     "the parser is done with it."]

    # the `bible` program's output (it reads the KJV's compressed data file): a chapter line when the
    # chapter changes, then one verse per line
    (tmp_path / "bible-kjv" / "x").mkdir(parents=True)
    out = ("\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 Too short here.\n"
           "\n1 John 2\n\n  1 My little children, these things write I unto you, that ye sin not.\n")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(drift_data.subprocess, "run", fake_run)
    texts, labels = drift_data.bible_kjv(tmp_path)
    assert labels == ["Genesis", "1 John"]
    assert texts == ["In the beginning God created the heaven and the earth.",
                     "My little children, these things write I unto you, that ye sin not."]
    assert calls[0][-1] == "Gen1:1-Rev22:21" and "-l100000" in calls[0]


PG_HTML = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "x.dtd"><html xmlns="http://www.w3.org/1999/xhtml">
<head><title>SELECT, a title long enough to be kept were it a paragraph of the page, which it is not at all</title>
<link rel="prev" href="sql-security-label.html" title="SECURITY LABEL" /></head><body>
<div class="navheader"><table><tr><td><p>Navigation text that is long enough to be kept were it prose, but it is
the page's navigation header, so the parser drops it with the footer.</p></td></tr></table><hr /></div>
<div class="refentry"><a id="id-1" class="indexterm"></a><div class="refnamediv"><h2>SELECT</h2>
<p>SELECT &#8212; retrieve rows</p></div>
<pre class="synopsis">SELECT [ ALL | DISTINCT ] expression FROM from_item WHERE condition GROUP BY a very long synopsis
of a command that is code, not prose, and is dropped whatever its length</pre>
<p><code class="command">SELECT</code> retrieves rows from zero or more tables. The general
processing of <code class="command">SELECT</code> is as follows: all queries in the<br />WITH list are
computed &amp; kept, <span class="emphasis"><em>then</em></span> the rest.</p>
<p>x = (a); y = [b]; z = {c}; f(x) = g(y); h(z) = (w); k = l; m = n; o = p; q = r; s = t; u = v; and w</p>
</div><div class="navfooter"><p>Another navigation paragraph that is long enough to be kept were it prose, but it
is the footer of the page and is dropped.</p></div></body></html>
"""

HANDBOOK_CHAPTER = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Chapter 6. Maintenance and Updates</title>
<link rel="home" href="index.html" title="The Handbook" /><link rel="up" href="index.html" title="The Handbook" />
</head><body><ul class="docnav top"><li class="previous"><a href="x.html"><strong>Prev</strong></a></li></ul>
<div class="chapter"><div class="para">
  What makes Debian so popular with administrators is how easily software can be installed and how easily
  the whole system can be updated.
</div></div></body></html>
"""

HANDBOOK_SECTION = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>6.2. aptitude, apt-get, and apt Commands</title>
<link rel="up" href="apt.html" title="Chapter 6. Maintenance and Updates" /></head><body>
<div class="section"><div class="para">
  The first part of this paragraph is long enough to be kept on its own, as a paragraph, before the list
  that is nested inside it:
  <div class="itemizedlist"><ul><li class="listitem"><div class="para">
    An item of the list is a paragraph of its own, and this one is long enough to be kept by the parser.
  </div></li></ul></div>
  and a short tail.
  <pre class="screen"><code>apt install a screen that is code and is dropped however many words it happens to hold</code></pre>
</div></div></body></html>
"""


def test_fresh4_loaders_parse_their_formats(tmp_path):
    from load import drift_data

    html = tmp_path / "postgresql-docs" / "x" / "usr" / "share" / "doc" / "postgresql-doc-15" / "html"
    html.mkdir(parents=True)
    (html / "sql-select.html").write_text(PG_HTML)
    (html / "hstore.html").write_text(PG_HTML.replace("rows from zero", "hstore rows from zero"))
    texts, labels = drift_data.postgresql_docs(tmp_path)
    assert labels == ["hstore", "sql"]  # files in name order; the label is the name up to its first "-"
    assert texts[1] == ("SELECT retrieves rows from zero or more tables. The general processing of SELECT is as "
                        "follows: all queries in the WITH list are computed & kept, then the rest.")

    hb = tmp_path / "debian-handbook" / "x" / "usr" / "share" / "doc" / "debian-handbook" / "html" / "en-US"
    hb.mkdir(parents=True)
    (hb / "apt.html").write_text(HANDBOOK_CHAPTER)
    (hb / "sect.apt-get.html").write_text(HANDBOOK_SECTION)
    (hb / "sect.apt-get-deeper.html").write_text(HANDBOOK_SECTION.replace('href="apt.html"', 'href="sect.apt-get.html"')
                                                 .replace("The first part", "A deeper section's first part")
                                                 .replace("An item of", "Another item of"))
    texts, labels = drift_data.debian_handbook(tmp_path)
    assert labels == ["apt"] * 5  # the chapter, through the pages' "up" links
    assert texts[0].startswith("What makes Debian so popular")
    assert texts[1:3] == ["A deeper section's first part of this paragraph is long enough to be kept on its own, as "
                          "a paragraph, before the list that is nested inside it:",
                          "Another item of the list is a paragraph of its own, and this one is long enough to be "
                          "kept by the parser."]


SPHINX_HTML = """<!DOCTYPE html>
<html class="writer-html5" lang="en" >
<head><meta charset="utf-8" /><title>Control Group v2 &mdash; The Linux Kernel  documentation</title>
<script src="../_static/jquery.js"></script><link rel="index" title="Index" href="../genindex.html" /></head>
<body class="wy-body-for-nav"><div class="wy-grid-for-nav"><nav data-toggle="wy-nav-shift" class="wy-nav-side">
<div class="wy-menu wy-menu-vertical" role="navigation"><p class="caption" role="heading"><span class="caption-text">
Working with the development community</span></p><ul><li class="toctree-l1"><a href="x.html">A guide</a></li></ul>
</div></nav><section class="wy-nav-content-wrap"><div class="rst-content"><div itemprop="articleBody">
<section id="control-group-v2"><h1>Control Group v2<a class="headerlink" href="#control-group-v2">¶</a></h1>
<p>This is the authoritative documentation on the design, interface and conventions of cgroup v2. It
describes all userland-visible aspects of cgroup including core and specific <code class="docutils literal
notranslate"><span class="pre">controller</span></code> behaviors.</p>
<div class="highlight-none notranslate"><div class="highlight"><pre><span></span># mount -t cgroup2 none $MOUNT_POINT
and a literal block that has enough words to be kept were it prose, but it is code and is dropped
</pre></div></div>
<div class="admonition warning"><p class="admonition-title">Warning</p>
<p>A warning paragraph inside an admonition is a paragraph like the others, and it is long enough to be kept
by the parser.</p></div>
</section></div><footer><div role="contentinfo"><p>&#169; Copyright The kernel development community.</p>
</div></footer></div></section></div></body></html>
"""

TEXINFO_HTML = """<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" "http://www.w3.org/TR/html4/loose.dtd">
<html><!-- Created by GNU Texinfo 6.8 --><head><title>An Introduction to R</title></head><body lang="en">
<div class="chapter" id="Preface">
<div class="header">
<p>
Next: <a href="#Introduction-and-preliminaries" accesskey="n" rel="next">Introduction and preliminaries</a>,
Previous: <a href="#Top" accesskey="p" rel="prev">An Introduction to R</a>, Up: <a href="#Top" accesskey="u"
rel="up">An Introduction to R</a> &nbsp; [<a href="#SEC_Contents" rel="contents">Contents</a>][<a
href="#Index" rel="index">Index</a>]</p>
</div>
<span id="Preface-1"></span><h2 class="unnumbered">Preface</h2>
<p>This introduction to R is derived from an original set of notes describing the S and S-PLUS
environments written in 1990&ndash;2 by Bill Venables and David M. Smith when at the University of
Adelaide.
</p>
<div class="example">
<pre class="example">&gt; x &lt;- c(10.4, 5.6, 3.1, 6.4, 21.7) is an assignment that is code, not prose, of any length at all
</pre></div>
<p>Too short a paragraph.</p>
</div></body></html>
"""


def test_fresh5_loaders_parse_their_formats(tmp_path):
    from load import drift_data

    html = tmp_path / "linux-docs" / "x" / "usr" / "share" / "doc" / "linux-doc-6.1" / "html"
    for page in ("admin-guide/cgroup-v2.html", "admin-guide/sysctl/vm.html", "networking/index.html", "index.html",
                 "translations/it_IT/index.html", "_sources/x.html", "genindex.html", "search.html"):
        (html / page).parent.mkdir(parents=True, exist_ok=True)
        (html / page).write_text(SPHINX_HTML.replace("design,", f"design ({page}),"))
    texts, labels = drift_data.linux_docs(tmp_path)
    # pages in path order; the label is the top-level directory (a page at the root: index); no
    # translations, no Sphinx files, no search or index pages
    assert labels == ["admin-guide"] * 3 + ["index", "networking"]  # the same warning on every page: kept once
    assert texts[0] == ("This is the authoritative documentation on the design (admin-guide/cgroup-v2.html), "
                        "interface and conventions of cgroup v2. It describes all userland-visible aspects of cgroup "
                        "including core and specific controller behaviors.")
    assert texts[1].startswith("A warning paragraph inside an admonition")
    assert "admin-guide/sysctl/vm.html" in texts[2] and "(index.html)" in texts[3]

    manual = tmp_path / "r-manuals" / "x" / "usr" / "share" / "R" / "doc" / "manual"
    manual.mkdir(parents=True)
    (manual / "R-intro.html").write_text(TEXINFO_HTML)
    (manual / "R-exts.html").write_text(TEXINFO_HTML.replace("This introduction to R", "This manual on extensions"))
    texts, labels = drift_data.r_manuals(tmp_path)
    assert labels == ["R-exts", "R-intro"]  # the manual (file name) in name order; no navigation line, no example
    assert texts[1] == ("This introduction to R is derived from an original set of notes describing the S and "
                        "S-PLUS environments written in 1990–2 by Bill Venables and David M. Smith when at the "
                        "University of Adelaide.")
