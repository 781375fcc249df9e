"""`ckptkit inspect PATH --html FILE`: the layout map, rendered in a real browser.

The page is opened by headless Chromium (Debian's `chromium`, installed by
scripts/setup.sh) and read back through the DOM it built (`--dump-dom`): the
script finished (body data-rendered="1"), raised nothing (data-errors="0",
and no console line at all on Chromium's log), every data file and every
tensor of the checkpoint is there, and each tensor's chunk boxes tile its
global shape exactly (volumes add up, no two overlap, all inside), for the
bundled Megatron sample and for a sharded folder written by safetensors. A
damaged copy of the sample (a truncated data file) is drawn with its problem
listed and its file marked. A screenshot of the sample's map is kept under
build/artifacts/ (CI keeps it).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, "examples", "torch_dist")
ARTIFACTS = os.environ.get("CKPTKIT_ARTIFACTS", os.path.join(REPO, "build", "artifacts"))


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed (scripts/setup.sh installs Debian's chromium)")


def _browser(args, url, timeout=60):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
           *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class _Dom(HTMLParser):
    """What the tests read from the dumped DOM: body attributes, files, tensors
    with their chunks (in document order: a chunk belongs to the tensor before
    it), problems."""

    def __init__(self):
        super().__init__()
        self.body, self.files, self.tensors, self.problems = {}, [], [], []
        self.ranks, self.stages, self.writers, self.folders = [], [], [], []
        self._in_problem = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = set((a.get("class") or "").split())
        if tag == "body":
            self.body = a
        elif "file" in cls and "data-file" in a:
            self.files.append({"name": a["data-file"], "bytes": int(a["data-bytes"]), "rank": int(a["data-rank"]),
                               "bad": "bad" in cls, "missing": a.get("data-missing") == "1"})
        elif "tensor" in cls and "data-key" in a:
            self.tensors.append({"key": a["data-key"], "shape": json.loads(a["data-shape"]), "chunks": []})
        elif tag == "g" and "chunk" in cls:
            self.tensors[-1]["chunks"].append({"o": json.loads(a["data-offsets"]), "s": json.loads(a["data-sizes"]),
                                               "file": a["data-file"], "rank": int(a["data-rank"]),
                                               "holders": json.loads(a.get("data-holders", "null"))})
        elif "rank" in cls and "data-rank" in a:
            self.ranks.append({k[5:]: (json.loads(v) if k == "data-files" else int(v))
                               for k, v in a.items() if k.startswith("data-")})
        elif "folder" in cls and "data-folder" in a:
            self.folders.append({k[5:]: (json.loads(v) if k in ("data-files", "data-layers", "data-experts")
                                         else v if k == "data-folder" else int(v))
                                 for k, v in a.items() if k.startswith("data-")})
        elif "stage" in cls and "data-pp" in a:
            self.stages.append({"pp": int(a["data-pp"]), "layers": json.loads(a["data-layers"])})
        elif tag == "td" and "writers" in cls:
            self.writers.append(json.loads(a["data-writers"]))
        elif tag == "li" and "problem-item" in cls:
            self._in_problem = True
            self.problems.append("")

    def handle_endtag(self, tag):
        if tag == "li":
            self._in_problem = False

    def handle_data(self, data):
        if self._in_problem:
            self.problems[-1] += data


def _render(cli, path, html, *, screenshot=None):
    r = subprocess.run([cli, "inspect", str(path), "--html", str(html)], capture_output=True, text=True)
    assert os.path.exists(html), r.stderr
    if screenshot is not None:
        os.makedirs(os.path.dirname(screenshot), exist_ok=True)
        s = _browser(["--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={screenshot}"], f"file://{html}")
        assert s.returncode == 0 and os.path.getsize(screenshot) > 10000, s.stderr[-2000:]
    b = _browser(["--dump-dom"], f"file://{html}")
    assert b.returncode == 0, b.stderr[-2000:]
    console = [line for line in b.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = _Dom()
    dom.feed(b.stdout)
    assert dom.body.get("data-rendered") == "1", "the page's script did not finish"
    assert dom.body.get("data-errors") == "0"
    return r.returncode, dom


def _check_tiling(t):
    shape = t["shape"] or [1]
    total = math.prod(shape)
    vol = 0
    for c in t["chunks"]:
        o, s = (c["o"] or [0]), (c["s"] or [1])
        assert len(o) == len(s) == len(shape), (t["key"], c)
        assert all(0 <= a and a + b <= n for a, b, n in zip(o, s, shape)), (t["key"], c)
        vol += math.prod(s)
    assert vol == total, (t["key"], vol, total)
    for a, b in itertools.combinations(t["chunks"], 2):
        overlap = all(max(x, y) < min(x + w, y + v) for x, w, y, v in zip(a["o"], a["s"], b["o"], b["s"]))
        assert not overlap, (t["key"], a, b)


def test_sample_map_in_chromium(cli_path, tmp_path):
    html = tmp_path / "map.html"
    rc, dom = _render(cli_path, SAMPLE, html, screenshot=os.path.join(ARTIFACTS, "layout_map_sample.png"))
    assert rc == 0
    ckpt = os.path.join(SAMPLE, "iter_0000010")
    assert sorted(f["name"] for f in dom.files) == sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp"))
    for f in dom.files:
        assert f["bytes"] == os.path.getsize(os.path.join(ckpt, f["name"]))
        assert not f["bad"]
    doc = json.loads(subprocess.run([cli_path, "inspect", SAMPLE, "--json"], capture_output=True, text=True).stdout)
    assert sorted(t["key"] for t in dom.tensors) == sorted(t["key"] for t in doc["tensors"])
    shapes = {t["key"]: t["shape"] for t in doc["tensors"]}
    for t in dom.tensors:
        assert t["shape"] == shapes[t["key"]]
        _check_tiling(t)
        for c in t["chunks"]:  # the rank colouring follows the file that holds the chunk
            assert c["rank"] == int(c["file"][2:].split("_")[0]), c
    # TP2 x PP2 x DP2 with fully parallel save: every rank wrote some chunk.
    assert {c["rank"] for t in dom.tensors for c in t["chunks"]} == set(range(8))
    assert dom.problems == []


def _check_grid(dom, ckpt, sizes, num_layers):
    """The grid against Megatron's rank order (tp fastest, then cp, dp; pp
    outermost), the files on disk, and the interleaved stage layout."""
    tp, cp, dp, pp, vpp = (sizes[k] for k in ("tp", "cp", "dp", "pp", "vpp"))
    world = tp * cp * dp * pp
    assert sorted(r["rank"] for r in dom.ranks) == list(range(world))
    on_disk = {}
    for name in os.listdir(ckpt):
        if name.endswith(".distcp"):
            on_disk.setdefault(int(name[2:].split("_")[0]), []).append(name)
    for r in dom.ranks:
        rank = r["rank"]
        assert (r["tp"], r["cp"], r["dp"], r["pp"]) == (rank % tp, rank // tp % cp, rank // (tp * cp) % dp,
                                                       rank // (tp * cp * dp)), r
        assert sorted(r["files"]) == sorted(on_disk.get(rank, []))
        assert r["bytes"] == sum(os.path.getsize(os.path.join(ckpt, f)) for f in r["files"])
    # One block per pipeline rank; virtual stage s of pipeline rank p holds model chunk s * pp + p.
    per_chunk = num_layers // (pp * vpp)
    assert [b["pp"] for b in dom.stages] == list(range(pp))
    for b in dom.stages:
        want = [[(s * pp + b["pp"]) * per_chunk, (s * pp + b["pp"] + 1) * per_chunk] for s in range(vpp)]
        assert b["layers"] == want, b
    # Each column (a model shard) names the DP replicas that wrote files.
    assert len(dom.writers) == pp * cp * tp
    wrote = {r["rank"] for r in dom.ranks if r["bytes"] > 0}
    assert sorted(w for col in dom.writers for w in col) == sorted(wrote)


def test_parallel_grid_of_the_sample(cli_path, tmp_path):
    _, dom = _render(cli_path, SAMPLE, tmp_path / "map.html")
    doc = json.loads(subprocess.run([cli_path, "inspect", SAMPLE, "--json"], capture_output=True, text=True).stdout)
    s = doc["details"]["megatron"]["summary"]
    sizes = {"cp": 1, "vpp": 1, **s["layout_from_args"]}
    assert (sizes["tp"], sizes["pp"], sizes["dp"]) == (2, 2, 2)
    _check_grid(dom, os.path.join(SAMPLE, "iter_0000010"), sizes, s["model"]["num_layers"])


def test_parallel_grid_with_virtual_stages(cli_path, tmp_path):
    # Written by megatron-core 0.16.1 with PP2 x VPP2 x DP2 (tests/golden/legacy/make_golden.py).
    ckpt = os.path.join(REPO, "tests", "golden", "legacy", "mc016_llama_pp2vpp2dp2", "fully_reshardable",
                        "iter_0000002")
    _, dom = _render(cli_path, ckpt, tmp_path / "map.html")
    _check_grid(dom, ckpt, {"tp": 1, "cp": 1, "dp": 2, "pp": 2, "vpp": 2}, 4)


@pytest.mark.parametrize("golden", ["mc016_llama_tp2pp2dp2", "mc016_llama_pp2vpp2dp2", "mc016_mixtral_ep2"])
def test_legacy_grid(cli_path, tmp_path, golden):
    """A legacy checkpoint written by megatron-core 0.16.1 (tests/golden/legacy/make_golden.py):
    one cell per mp_rank_* folder at the coordinates Megatron-LM's folder naming gives
    (mp_rank_<TP:02d>[_<PP:03d> when PP > 1][_<EP:03d> when EP > 1]), its files and their
    sizes on disk, and the layers (interleaved for VPP) and experts each folder holds."""
    root = os.path.join(REPO, "tests", "golden", "legacy", golden)
    spec = json.load(open(os.path.join(root, "layout.json")))["spec"]
    tp, pp, ep, vpp = spec["tp"], spec["pp"], spec["ep"] or 1, spec["vpp"] or 1
    num_layers = spec["model_overrides"]["num_layers"]
    num_experts = spec.get("family_spec", {}).get("num_experts") or 0
    ckpt = os.path.join(root, "legacy", "iter_0000002")
    rc, dom = _render(cli_path, os.path.join(root, "legacy"), tmp_path / "map.html")
    assert rc == 0
    folders = sorted(f for f in os.listdir(ckpt) if f.startswith("mp_rank_"))
    assert sorted(c["folder"] for c in dom.folders) == folders
    per_chunk = num_layers // (pp * vpp)
    for c in dom.folders:
        nums = [int(x) for x in c["folder"].split("_")[2:]]
        want = {"tp": nums[0], "pp": nums[1] if pp > 1 else 0, "ep": nums[-1] if ep > 1 else 0}
        assert {k: c[k] for k in want} == want, c
        on_disk = sorted(os.listdir(os.path.join(ckpt, c["folder"])))
        assert sorted(c["files"]) == [c["folder"] + "/" + f for f in on_disk]
        assert c["bytes"] == sum(os.path.getsize(os.path.join(ckpt, c["folder"], f)) for f in on_disk)
        # Virtual stage s of pipeline rank p holds model chunk s * pp + p.
        assert c["layers"] == [list(range((s * pp + c["pp"]) * per_chunk, (s * pp + c["pp"] + 1) * per_chunk))
                               for s in range(vpp)], c
        local = num_experts // ep
        assert c["experts"] == list(range(c["ep"] * local, (c["ep"] + 1) * local)), c
    assert [b["pp"] for b in dom.stages] == list(range(pp))
    for b in dom.stages:
        assert b["layers"] == [[(s * pp + b["pp"]) * per_chunk, (s * pp + b["pp"] + 1) * per_chunk]
                               for s in range(vpp)], b
    # The files list groups each folder's files under its coordinates.
    assert sorted(f["name"] for f in dom.files) == sorted(c + "/" + f for c in folders
                                                        for f in os.listdir(os.path.join(ckpt, c)))
    for f in dom.files:  # sized as on disk
        assert f["bytes"] == os.path.getsize(os.path.join(ckpt, f["name"])), f


def test_sharded_safetensors_map(cli_path, tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    folder = tmp_path / "model"
    folder.mkdir()
    g = torch.Generator().manual_seed(5)
    shards = {"model-00001-of-00002.safetensors": {"a.weight": torch.randn(8, 4, generator=g)},
              "model-00002-of-00002.safetensors": {"b.weight": torch.randn(3, generator=g),
                                                   "c.scalar": torch.tensor(1.5)}}
    weight_map = {}
    for name, sd in shards.items():
        st.save_file(sd, str(folder / name))
        weight_map.update({k: name for k in sd})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    rc, dom = _render(cli_path, folder, tmp_path / "map.html")
    assert rc == 0
    assert sorted(f["name"] for f in dom.files) == sorted(shards)
    assert sorted(t["key"] for t in dom.tensors) == sorted(weight_map)
    for t in dom.tensors:
        _check_tiling(t)
        (c,) = t["chunks"]
        assert c["file"] == weight_map[t["key"]]


def test_damaged_copy_map_shows_the_problem(cli_path, tmp_path):
    damaged = tmp_path / "torch_dist"
    shutil.copytree(SAMPLE, damaged)
    os.truncate(damaged / "iter_0000010" / "__3_0.distcp", 1000)
    rc, dom = _render(cli_path, damaged, tmp_path / "map.html")
    assert rc == 1  # inspect's exit code for problems in the data; the map is still written
    assert dom.problems and all("__3_0.distcp" in p for p in dom.problems), dom.problems
    assert [f["name"] for f in dom.files if f["bad"]] == ["__3_0.distcp"]
    assert len(dom.tensors) == 36


def test_missing_file_is_drawn_missing(cli_path, tmp_path):
    """A data file .metadata names but the folder lacks is still a file of the
    map (and of --json's details.files), marked missing, and its chunks point
    at it."""
    damaged = tmp_path / "torch_dist"
    shutil.copytree(SAMPLE, damaged)
    os.remove(damaged / "iter_0000010" / "__5_0.distcp")
    rc, dom = _render(cli_path, damaged, tmp_path / "map.html")
    assert rc == 1
    assert [(f["name"], f["bytes"]) for f in dom.files if f["missing"]] == [("__5_0.distcp", 0)]
    assert [f["name"] for f in dom.files if f["bad"]] == ["__5_0.distcp"]
    assert len(dom.files) == 8 and len(dom.tensors) == 36
    on_missing = [c for t in dom.tensors for c in t["chunks"] if c["file"] == "__5_0.distcp"]
    assert on_missing and all(c["rank"] == 5 for c in on_missing)
    r = subprocess.run([cli_path, "inspect", str(damaged), "--json"], capture_output=True, text=True)
    doc = json.loads(r.stdout)
    missing = [f for f in doc["details"]["files"] if f.get("missing")]
    assert [(f["name"], f["bytes"], f["rank"]) for f in missing] == [("__5_0.distcp", 0, 5)]
    assert missing[0]["tensor_chunks"] == sum(c["file"] == "__5_0.distcp" for t in doc["tensors"]
                                              for c in t.get("chunk_list", []))
    text = subprocess.run([cli_path, "inspect", str(damaged)], capture_output=True, text=True).stdout
    assert "(1 MISSING)" in text and re.search(r"__5_0\.distcp +rank 5 writer 0 +MISSING", text), text


def test_no_map_for_unreadable_input(cli_path, tmp_path):
    html = tmp_path / "map.html"
    r = subprocess.run([cli_path, "inspect", str(tmp_path / "missing"), "--html", str(html)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and not html.exists()


def test_chunk_holders_are_megatrons_replicas(cli_path, tmp_path):
    """Each chunk's holders in the map are the ranks whose sharded state dict holds that chunk,
    as the real megatron-core 0.16.1 builds it: GPTModel.sharded_state_dict() and its
    fully_reshardable optimizer state (make_sharded_optimizer_tensor) on 8 gloo ranks, with the
    golden's model and layout (TP2 x PP2 x DP2; TP-split weights, norms replicated across TP,
    stacked layers split by PP). The DOM carries them as g.chunk[data-holders]."""
    pytest.importorskip("megatron.core")
    import dataclasses

    import megatron_fixtures as mf

    golden = os.path.join(REPO, "tests", "golden", "megatron", "mc016_gpt_tp2pp2dp2")
    with open(golden + ".expected.json") as f:
        model = json.load(f)["model"]
    names = {f.name for f in dataclasses.fields(mf.GPTSpec)}
    spec = mf.GPTSpec(root=str(tmp_path), **{k: v for k, v in model.items() if k in names})
    mf.run_ranks(8, mf.dump_gpt_chunks, spec)
    held = {}  # (key, offsets) -> ranks
    for rank in range(8):
        with open(tmp_path / f"chunks_{rank}.json") as f:
            for key, offsets, _ in json.load(f):
                held.setdefault((key, tuple(offsets)), set()).add(rank)

    ckpt = os.path.join(golden, "iter_0000010")
    _, dom = _render(cli_path, ckpt, tmp_path / "map.html")
    checked = 0
    for t in dom.tensors:
        for c in t["chunks"]:
            want = held.get((t["key"], tuple(c["o"])))
            assert want is not None, (t["key"], c)
            assert c["holders"] == sorted(want), (t["key"], c)
            assert c["rank"] in want  # a holder wrote it
            checked += 1
    assert checked == sum(len(t["chunks"]) for t in dom.tensors) > 100
    # Norms are replicated across TP (4 holders), TP-split weights are not (2 holders).
    sizes = {len(c["holders"]) for t in dom.tensors for c in t["chunks"]}
    assert sizes == {2, 4}, sizes


def test_chunk_holders_of_experts_are_megatrons(cli_path, tmp_path):
    """A real Mixtral-style MoE GPTModel saved by megatron-core 0.16.1 at TP2 x EP4 (DP2, ETP1,
    4 gloo ranks; megatron_models.save_family): dense TP-split weights are held by their TP
    rank's DP replicas, norms and the router by all 4 ranks, each expert's weights by the one
    rank of its EP rank; every chunk's holders equal the ranks whose sharded state dict has it."""
    pytest.importorskip("megatron.core")
    import megatron_models as mm

    root = mm.save_family(mm.FAMILIES["mixtral"], str(tmp_path / "mixtral"), tp=2, pp=1, ep=4, dump_chunks=True)
    held = {}
    for rank in range(4):
        with open(os.path.join(root, f"chunks_{rank}.json")) as f:
            for key, offsets in json.load(f):
                held.setdefault((key, tuple(offsets)), set()).add(rank)
    _, dom = _render(cli_path, root, tmp_path / "map.html")
    sizes = {}
    for t in dom.tensors:
        if t["key"].startswith("optimizer."):
            continue
        for c in t["chunks"]:
            want = held.get((t["key"], tuple(c["o"])))
            assert want is not None, (t["key"], c)
            assert c["holders"] == sorted(want), (t["key"], c)
            sizes.setdefault(".experts." in t["key"], set()).add(len(want))
    assert sizes == {False: {2, 4}, True: {1}}, sizes


def test_python_layout_map_is_the_pages_data(cli_path, tmp_path):
    """ckptkit.open(path).layout_map() returns the data the page draws."""
    ckptkit = pytest.importorskip("ckptkit")
    html = tmp_path / "map.html"
    r = subprocess.run([cli_path, "inspect", SAMPLE, "--html", str(html)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = html.read_text()
    start = page.index('<script type="application/json" id="data">') + len('<script type="application/json" id="data">')
    embedded = json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))
    with ckptkit.open(SAMPLE) as ck:
        data = ck.layout_map()
    assert data == embedded
    assert len(data["files"]) == 8 and len(data["tensors"]) == 36 and data["layout"].startswith("TP=2 PP=2 DP=2")
