"""`ckptkit inspect PATH --svg FILE`: the picture of a checkpoint's files.

Read back with Python's XML parser (a malformed document fails), then checked
against what the checkpoint holds: every data file of the bundled Megatron
torch_dist sample (the names and sizes on disk, grouped by the rank its name
gives), bar lengths proportional to bytes, the other files listed; a sharded
safetensors folder written by safetensors and a torch.save file, their files
and the bytes of the tensors in each (from `inspect --json`); a damaged copy of
the sample (a truncated data file) still drawn, its problems in red, exit 1;
an unreadable input or an unwritable SVG path: exit 2 and no file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, "examples", "torch_dist")
NS = {"s": "http://www.w3.org/2000/svg"}
BAR_WIDTH = 480  # the bar column of layout_svg.cc: the largest file spans it


def _inspect(cli, path, svg, *extra):
    return subprocess.run([cli, "inspect", str(path), "--svg", str(svg), *extra], capture_output=True, text=True)


def _json(cli, path):
    r = subprocess.run([cli, "inspect", str(path), "--json"], capture_output=True, text=True)
    return json.loads(r.stdout)


def _rows(svg):
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    rows = []
    for g in root.iterfind(".//s:g[@class='file']", NS):
        bar = g.find("s:rect[@class='bar']", NS)
        texts = ["".join(t.itertext()) for t in g.iterfind("s:text", NS)]
        rows.append({"file": g.get("data-file"), "bytes": int(g.get("data-bytes")), "rank": int(g.get("data-rank")),
                     "writer": int(g.get("data-writer")), "width": float(bar.get("width")), "texts": texts})
    headings = ["".join(t.itertext()) for t in root.iterfind(".//s:text[@class='group']", NS)]
    problems = ["".join(t.itertext()) for t in root.iterfind(".//s:text[@class='problem']", NS)]
    other = ["".join(t.itertext()) for t in root.iterfind(".//s:text[@class='other']", NS)]
    return rows, headings, problems, other


def _check_bars(rows):
    largest = max(r["bytes"] for r in rows)
    for r in rows:
        assert r["width"] == pytest.approx(BAR_WIDTH * r["bytes"] / largest, abs=0.01), r


def test_torch_dist_sample_every_data_file_by_rank(cli_path, tmp_path):
    svg = tmp_path / "layout.svg"
    r = _inspect(cli_path, SAMPLE, svg)
    assert r.returncode == 0, r.stderr
    rows, headings, problems, other = _rows(svg)
    ckpt = os.path.join(SAMPLE, "iter_0000010")
    on_disk = sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp"))
    assert sorted(r["file"] for r in rows) == on_disk
    for row in rows:
        assert row["bytes"] == os.path.getsize(os.path.join(ckpt, row["file"])), row
        rank, writer = row["file"][2:].split(".")[0].split("_")
        assert (row["rank"], row["writer"]) == (int(rank), int(writer))
        assert row["texts"][0] == row["file"]
        assert row["texts"][-1], "each file says what it holds"
    assert headings == [f"rank {r}" for r in sorted({row["rank"] for row in rows})]
    _check_bars(rows)
    # What each file holds is inspect's description of it.
    desc = {f["name"]: f["description"] for f in _json(cli_path, SAMPLE)["details"]["files"]}
    for row in rows:
        assert " ".join(row["texts"][2:]).startswith(desc[row["file"]][:60]), row
    assert problems == []
    assert other and "common.pt" in other[0] and "metadata.json" in other[0]


@pytest.mark.parametrize("kind", ["sharded_safetensors", "torch_file"])
def test_files_named_by_the_tensors(cli_path, tmp_path, kind):
    g = torch.Generator().manual_seed(3)
    sd = {f"model.layers.{i}.mlp.weight": torch.randn(64, 32 + 8 * i, generator=g) for i in range(4)}
    sd["model.embed_tokens.weight"] = torch.randn(100, 32, generator=g)
    if kind == "torch_file":
        path = tmp_path / "model.pt"
        torch.save(sd, path)
    else:
        path = tmp_path / "model"
        path.mkdir()
        shards = [["model.embed_tokens.weight", "model.layers.0.mlp.weight"],
                  ["model.layers.1.mlp.weight", "model.layers.2.mlp.weight", "model.layers.3.mlp.weight"]]
        weight_map = {}
        for i, keys in enumerate(shards):
            name = f"model-{i + 1:05d}-of-00002.safetensors"
            safetensors_torch.save_file({k: sd[k] for k in keys}, str(path / name))
            weight_map.update({k: name for k in keys})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    svg = tmp_path / "layout.svg"
    r = _inspect(cli_path, path, svg)
    assert r.returncode == 0, r.stderr
    rows, headings, problems, _ = _rows(svg)
    doc = _json(cli_path, path)
    want = {}
    for t in doc["tensors"]:
        f = t.get("file", os.path.basename(str(path)))
        want[f] = want.get(f, 0) + t["nbytes"]
    assert {r["file"]: r["bytes"] for r in rows} == want
    assert sum(want.values()) == sum(v.numel() * v.element_size() for v in sd.values())
    assert headings == ["files"] and problems == []
    _check_bars(rows)
    if kind == "torch_file":
        (row,) = rows
        assert "model.layers.{0..3}.* (4)" in row["texts"][-1] and "model.embed_tokens.weight" in row["texts"][-1]


def test_damaged_copy_is_drawn_with_its_problems(cli_path, tmp_path):
    damaged = tmp_path / "torch_dist"
    shutil.copytree(SAMPLE, damaged)
    victim = damaged / "iter_0000010" / "__3_0.distcp"
    os.truncate(victim, 1000)
    svg = tmp_path / "damaged.svg"
    r = _inspect(cli_path, damaged, svg)
    assert r.returncode == 1, (r.returncode, r.stderr)
    rows, _, problems, _ = _rows(svg)
    assert len(rows) == 8
    assert problems and all("__3_0.distcp" in p for p in problems), problems
    assert {r["file"]: r["bytes"] for r in rows}["__3_0.distcp"] == 1000


def test_bad_input_or_destination_writes_nothing(cli_path, tmp_path):
    svg = tmp_path / "x.svg"
    r = _inspect(cli_path, tmp_path / "missing", svg)
    assert r.returncode == 2 and not svg.exists(), r.stderr
    r = _inspect(cli_path, SAMPLE, tmp_path / "no" / "such" / "dir" / "x.svg")
    assert r.returncode == 2, r.stderr
    assert "x.svg" in r.stderr
    assert not any(p.name.endswith(".svg") or "ckptkit-tmp" in p.name for p in tmp_path.rglob("*"))


def test_readme_picture_is_what_the_command_draws(cli_path, tmp_path):
    """README shows docs/images/sample_layout.svg: it must be what the command
    draws for the sample today (regenerate with the command in README)."""
    svg = tmp_path / "sample_layout.svg"
    r = subprocess.run([cli_path, "inspect", "examples/torch_dist", "--svg", str(svg)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(REPO, "docs", "images", "sample_layout.svg"), "rb") as f:
        assert f.read() == svg.read_bytes(), "docs/images/sample_layout.svg is stale: rerun the command in README"
