"""The ckptkit Python API: errors as the documented exceptions, hostile pickles
never executed, dtype mapping, lifetime and threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ckptkit
from helpers import as_bytes, random_tensor


class _Evil:
    """Pickles as os.system(<touch marker>) -- torch.load(weights_only=False) runs it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_pt(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "hostile.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32), "evil": _Evil(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_hostile_pickle_strict_refuses_naming_global_and_runs_nothing(tmp_path):
    path, marker = _hostile_pt(tmp_path)
    with pytest.raises(ckptkit.UnsupportedError) as exc:
        ckptkit.open(path)  # strict is the default
    msg = str(exc.value)
    # os.system pickles as posix.system on Linux; the error must name it.
    assert "system" in msg and ("posix" in msg or "os" in msg), msg
    assert isinstance(exc.value, NotImplementedError)
    assert not marker.exists(), "ckptkit executed the pickle payload"


def test_hostile_pickle_inspect_shows_opaque_object_and_runs_nothing(tmp_path):
    path, marker = _hostile_pt(tmp_path)
    with ckptkit.open(path, mode="inspect") as ckpt:
        assert "w" in ckpt
        np.testing.assert_array_equal(ckpt["w"], np.arange(4, dtype=np.float32))
        opaque = [o for o in ckpt.objects() if o["opaque"]]
        assert opaque, ckpt.objects()
        text = " ".join(o["type"] + " " + o["repr"] for o in opaque)
        assert "system" in text, opaque
    assert not marker.exists(), "ckptkit executed the pickle payload"


def test_hostile_payload_is_real(tmp_path):
    """Positive control: the payload does run under torch.load(weights_only=False),
    so the two tests above prove something. Runs in a subprocess."""
    path, marker = _hostile_pt(tmp_path)
    code = ("import torch, sys; torch.load(sys.argv[1], weights_only=False)")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=tmp_path,
                   capture_output=True, env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    assert marker.exists()


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        ckptkit.open(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(exc.value)


def test_missing_key_is_key_error(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "m.safetensors")
    with ckptkit.open(tmp_path / "m.safetensors") as ckpt:
        with pytest.raises(KeyError):
            ckpt["b"]
        with pytest.raises(KeyError):
            ckpt.info("b")
        assert "b" not in ckpt
        assert 3 not in ckpt


def test_bad_mode_is_value_error(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError):
        ckptkit.open(tmp_path / "m.safetensors", mode="yolo")


def _corrupt_safetensors(tmp_path):
    """Valid header whose data_offsets reach past the end of the file."""
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.arange(16, dtype=torch.float32)}, good)
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(good.read_bytes()[:-8])
    return bad


def _corrupt_pt(tmp_path):
    """A torch.save file whose data.pkl payload has its first byte (PROTO) smashed."""
    path = tmp_path / "smashed.pt"
    torch.save({"a": torch.ones(3)}, path)
    raw = bytearray(path.read_bytes())
    i = raw.index(b"data.pkl")
    # local header: name then extra field; payload starts at a 64-byte boundary
    # and begins with PROTO 2 (0x80 0x02).
    j = raw.index(b"\x80\x02", i)
    raw[j] = 0xFF
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("make", [_corrupt_safetensors, _corrupt_pt], ids=["safetensors", "pt"])
def test_corrupt_file_is_corrupt_checkpoint_error(make, tmp_path):
    path = make(tmp_path)
    with pytest.raises(ckptkit.CorruptCheckpointError) as exc:
        with ckptkit.open(path) as ckpt:
            for key in ckpt:
                ckpt.read_bytes(key)
    assert isinstance(exc.value, ValueError)
    assert path.name in str(exc.value), str(exc.value)


def test_garbage_file_is_an_error_not_a_crash(tmp_path):
    p = tmp_path / "garbage.pt"
    p.write_bytes(os.urandom(4096))
    with pytest.raises((ckptkit.CorruptCheckpointError, ckptkit.UnsupportedError, ValueError)):
        ckptkit.open(p)


def test_bfloat16_and_float8_numpy_raw_view_torch_real_dtype(gen, tmp_path):
    t = {"bf": random_tensor("bfloat16", (3, 4), gen),
         "f8": random_tensor("float8_e4m3fn", (5,), gen),
         "f32": random_tensor("float32", (2, 2), gen)}
    save_file(t, tmp_path / "m.safetensors")
    with ckptkit.open(tmp_path / "m.safetensors") as ckpt:
        bf = ckpt.numpy("bf")
        assert bf.dtype == np.uint16 and bf.shape == (3, 4)
        assert ckpt.info("bf").raw and ckpt.info("bf").dtype == "bfloat16"
        np.testing.assert_array_equal(bf, t["bf"].view(torch.int16).numpy().view(np.uint16))
        f8 = ckpt.numpy("f8")
        assert f8.dtype == np.uint8
        assert f8.tobytes() == as_bytes(t["f8"])
        assert not ckpt.info("f32").raw and ckpt["f32"].dtype == np.float32
        tb = ckpt.torch("bf")
        assert tb.dtype == torch.bfloat16 and as_bytes(tb) == as_bytes(t["bf"])
        # Results are independent, writable copies.
        arr = ckpt["f32"]
        arr[...] = 0
        assert ckpt["f32"].tobytes() == as_bytes(t["f32"])


def test_close_and_context_manager(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "m.safetensors")
    ckpt = ckptkit.open(tmp_path / "m.safetensors")
    assert not ckpt.closed and len(ckpt) == 1 and list(ckpt) == ["a"]
    ckpt.close()
    assert ckpt.closed
    with pytest.raises(ValueError):
        ckpt["a"]
    with pytest.raises(ValueError):
        ckpt.details()
    ckpt.close()  # idempotent
    with ckptkit.open(tmp_path / "m.safetensors") as c2:
        assert c2.info("a").shape == (2,)
    assert c2.closed


def test_pathlike_and_bytes_paths(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "m.safetensors")
    with ckptkit.open(str(tmp_path / "m.safetensors")) as c:
        assert c.keys() == ["a"]
    with ckptkit.open(os.fsencode(tmp_path / "m.safetensors")) as c:
        assert c.keys() == ["a"]


def test_concurrent_reads_from_threads_are_correct(gen, tmp_path):
    tensors = {f"t{i}": random_tensor("float32", (64, 64), gen) for i in range(16)}
    save_file(tensors, tmp_path / "m.safetensors")
    errors = []
    with ckptkit.open(tmp_path / "m.safetensors") as ckpt:
        def work(keys):
            try:
                for _ in range(5):
                    for k in keys:
                        assert ckpt.read_bytes(k).tobytes() == as_bytes(tensors[k])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        keys = list(tensors)
        threads = [threading.Thread(target=work, args=(keys[i::4],)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors, errors


def test_torch_not_imported_by_package_import():
    code = "import sys, ckptkit; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_details_is_plain_json_dict(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "m.safetensors", metadata={"k": "v"})
    with ckptkit.open(tmp_path / "m.safetensors") as c:
        d = c.details()
        assert isinstance(d, dict)
        import json
        assert '"v"' in json.dumps(d)


def test_convert_to_dcp_and_torch_dist_from_python(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    sd = {"w": torch.arange(24, dtype=torch.float32).reshape(4, 6), "b": torch.ones(3, dtype=torch.bfloat16),
          "step": 5}
    src = str(tmp_path / "src.pt")
    torch.save(sd, src)
    out = ckptkit.convert(src, tmp_path / "dcp", to="dcp", thread_count=2)
    assert [os.path.basename(f) for f in out["files"]] == ["__0_0.distcp", "__0_1.distcp", "ckptkit-manifest__0_.json",
                                                          ".metadata"]
    got = {"w": torch.zeros(4, 6), "b": torch.zeros(3, dtype=torch.bfloat16), "step": 0}
    dcp.load(got, storage_reader=FileSystemReader(str(tmp_path / "dcp")), no_dist=True)
    assert torch.equal(got["w"], sd["w"]) and torch.equal(got["b"], sd["b"]) and got["step"] == 5

    out = ckptkit.convert(src, tmp_path / "root", to="torch_dist", megatron_version="0.16", iteration=7)
    names = [os.path.relpath(f, tmp_path / "root") for f in out["files"]]
    assert names[-1] == "latest_checkpointed_iteration.txt", names
    assert names[-2] == os.path.join("iter_0000007", "metadata.json"), names
    assert os.path.join("iter_0000007", "common.pt") in names
    assert (tmp_path / "root" / "latest_checkpointed_iteration.txt").read_text() == "7"
    common = torch.load(tmp_path / "root" / "iter_0000007" / "common.pt", weights_only=True)
    assert common == {"step": 5}
    with ckptkit.open(tmp_path / "root") as ck:
        assert sorted(ck.keys()) == ["b", "w"]
        assert torch.equal(ck.torch("w"), sd["w"])
    with pytest.raises(ValueError, match="thread_count"):
        ckptkit.convert(src, tmp_path / "x", to="dcp", thread_count=0)
    with pytest.raises(ValueError, match="torch_dist"):
        ckptkit.convert(src, tmp_path / "x", to="megatron")
    # Library errors name the options as Python spells them, not the CLI's flags.
    with pytest.raises(ValueError, match='megatron_version applies only with to="torch_dist"') as e:
        ckptkit.convert(src, tmp_path / "x", to="dcp", megatron_version="0.16")
    assert "--" not in str(e.value)
    with pytest.raises(ValueError, match=r'max_shard_size does not apply with to="dcp" \(use thread_count\)'):
        ckptkit.convert(src, tmp_path / "x", to="dcp", max_shard_size="5GB")
    with pytest.raises(ValueError, match='to="hf" converts a Megatron-Core torch_dist checkpoint'):
        ckptkit.convert(src, tmp_path / "x", to="hf")
    assert not (tmp_path / "x").exists()
