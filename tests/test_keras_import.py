"""Keras weight import (reference/README.md §6): layouts, reference features, refusals."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pytest
import torch

from fertool.errors import ModelError
from fertool.models import build_model
from fertool.models.keras import import_keras
from tests._reference_weights import load_json, reference_state_dict
from tests.conftest import load_reference, reference_file


@pytest.fixture(scope="module")
def notop_h5(tmp_path_factory):
    """The unzipped no-top file (decompressed once for the module)."""
    path = tmp_path_factory.mktemp("keras") / "notop.h5"
    with gzip.open(reference_file("keras_resnet34_notop.h5.gz"), "rb") as src:
        path.write_bytes(src.read())
    return path


@pytest.fixture(scope="module")
def notop_ckpt(notop_h5):
    return import_keras(notop_h5)


def test_notop_gz_reproduces_reference_features():
    ckpt = import_keras(reference_file("keras_resnet34_notop.h5.gz"))  # read straight from the .gz
    ref = load_reference("keras_resnet34_notop.npz")
    x = torch.from_numpy(load_reference("full_network.npz")["input"]).permute(0, 3, 1, 2)
    model = build_model(ckpt["arch"], **ckpt["arch_args"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    seen = {}
    model.final_bn.register_forward_hook(lambda m, i, o: seen.__setitem__("bn", o))
    with torch.no_grad():
        gap = model.forward_features(x)
    features = torch.relu(seen["bn"]).permute(0, 2, 3, 1).numpy()  # after bn1 + relu1, NHWC
    np.testing.assert_allclose(features, ref["features"], atol=1e-4)
    np.testing.assert_allclose(gap.numpy(), ref["gap"], atol=1e-4)
    assert "initialised" in ckpt["extra"]["keras_head"]


def test_loaded_weights_equal_the_quantised_formula(notop_ckpt):
    want = reference_state_dict(
        load_json(reference_file("full_network.json")), "backbone", quantised=True, blocks_without=("head",)
    )
    got = notop_ckpt["state_dict"]
    assert len(want) == 176  # the backbone tensors of the file (README §6)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    body = [k for k in got if not k.startswith("head.") and not k.endswith("num_batches_tracked")]
    assert sorted(body) == sorted(want)


def _copy_layer(src: h5py.File, dst_group: h5py.Group, layer: str, names: list[str]) -> None:
    for wname in src[layer].attrs["weight_names"]:
        wname = wname.decode() if isinstance(wname, bytes) else wname
        dst_group.create_dataset(wname, data=src[layer][wname][()])
        names.append(wname)


def _write_whole_model(notop_h5, path, head_sizes, head_names=None):
    """A ResNet34_Train.py-style file: backbone nested in /model, dense head at the root."""
    head_names = head_names or ["dense"] + [f"dense_{i}" for i in range(1, len(head_sizes))]
    rng = np.random.default_rng(0)
    heads = {}
    with h5py.File(notop_h5, "r") as src, h5py.File(path, "w") as dst:
        layers = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        model = dst.create_group("model")
        names: list[str] = []
        for layer in layers:
            _copy_layer(src, model, layer, names)
        # Keras lists trainable weights first, then the moving statistics
        order = [n for n in names if "moving" not in n] + [n for n in names if "moving" in n]
        model.attrs["weight_names"] = order
        dst.create_group("data").attrs["weight_names"] = np.zeros((0,))
        fan_in = 512
        for name, size in zip(head_names, head_sizes):
            g = dst.create_group(name)
            kernel = rng.standard_normal((fan_in, size)).astype(np.float32)
            bias = rng.standard_normal(size).astype(np.float32)
            g.create_dataset(f"{name}/kernel:0", data=kernel)
            g.create_dataset(f"{name}/bias:0", data=bias)
            g.attrs["weight_names"] = [f"{name}/kernel:0", f"{name}/bias:0"]
            heads[name] = (kernel, bias)
            fan_in = size
        dst.attrs["layer_names"] = ["data", "model", "global_average_pooling2d", *head_names]
        dst.attrs["keras_version"] = "2.15.0"
        for extra in ("global_average_pooling2d",):
            dst.create_group(extra).attrs["weight_names"] = np.zeros((0,))
    return heads


def test_whole_model_file_with_head(notop_h5, notop_ckpt, tmp_path):
    path = tmp_path / "whole.h5"
    heads = _write_whole_model(notop_h5, path, [32, 16, 7])
    ckpt = import_keras(path)
    assert ckpt["arch_args"]["hidden"] == [32, 16]
    sd = ckpt["state_dict"]
    assert torch.equal(sd["head.fc1.weight"], torch.from_numpy(heads["dense"][0].T))
    assert torch.equal(sd["head.fc3.bias"], torch.from_numpy(heads["dense_2"][1]))
    for k, v in notop_ckpt["state_dict"].items():
        if not k.startswith("head."):
            assert torch.equal(sd[k], v), k
    assert build_model(ckpt["arch"], **ckpt["arch_args"]).load_state_dict(sd) is not None


def test_imagenet_head_is_left_out(notop_h5, tmp_path):
    path = tmp_path / "imagenet.h5"
    _write_whole_model(notop_h5, path, [1000], head_names=["fc1"])
    ckpt = import_keras(path, num_classes=7)
    assert ckpt["arch_args"]["hidden"] == [4096, 1024]
    assert "left out" in ckpt["extra"]["keras_head"] and "1000" in ckpt["extra"]["keras_head"]


def test_other_architecture_is_refused(notop_h5, tmp_path):
    # a ResNet with fewer units (like ResNet18: stage1 has 2 units) lacks stage1_unit3
    path = tmp_path / "short.h5"
    with h5py.File(notop_h5, "r") as src, h5py.File(path, "w") as dst:
        layers = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        kept = [n for n in layers if not n.startswith("stage1_unit3")]
        for layer in kept:
            src.copy(src[layer], dst, name=layer)
        dst.attrs["layer_names"] = kept
    with pytest.raises(ModelError, match=r"missing 10 ResNet34 tensors \(units\.stage1_unit3\.bn1\.weight"):
        import_keras(path)
    # an extra unknown layer with weights is listed as unexpected
    path2 = tmp_path / "extra.h5"
    with h5py.File(notop_h5, "r") as src, h5py.File(path2, "w") as dst:
        layers = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        for layer in layers:
            src.copy(src[layer], dst, name=layer)
        g = dst.create_group("stage5_unit1_conv1")
        g.create_dataset("stage5_unit1_conv1/kernel:0", data=np.zeros((3, 3, 4, 4), np.float32))
        g.attrs["weight_names"] = ["stage5_unit1_conv1/kernel:0"]
        dst.attrs["layer_names"] = layers + ["stage5_unit1_conv1"]
    with pytest.raises(ModelError, match=r"unexpected 1 weights \(stage5_unit1_conv1/kernel\)"):
        import_keras(path2)


def test_foreign_files_are_refused(tmp_path):
    vgg = tmp_path / "vgg.h5"
    with h5py.File(vgg, "w") as f:
        g = f.create_group("block1_conv1")
        g.create_dataset("block1_conv1/kernel:0", data=np.zeros((3, 3, 3, 8), np.float32))
        g.attrs["weight_names"] = ["block1_conv1/kernel:0"]
        f.attrs["layer_names"] = ["block1_conv1"]
    with pytest.raises(ModelError, match="not a classification_models ResNet weight file"):
        import_keras(vgg)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ModelError, match="not a readable Keras HDF5 weight file"):
        import_keras(junk)
    with pytest.raises(ModelError, match="no such file"):
        import_keras(tmp_path / "absent.h5")


def _tiny_keras(path, **extra):
    """A one-layer Keras-layout file; ``extra`` adds hostile parts (issue 26)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("bn_data")
        g.create_dataset("bn_data/gamma:0", data=np.ones(3, np.float32))
        g.attrs["weight_names"] = ["bn_data/gamma:0"]
        f.attrs["layer_names"] = ["bn_data"]
        for kind, value in extra.items():
            if kind == "soft":
                f["bn_data/bn_data/beta:0"] = h5py.SoftLink(value)
            elif kind == "external_link":
                f["stolen"] = h5py.ExternalLink(value, "/data")
            elif kind == "external_storage":
                f.create_dataset("raw", shape=(4,), dtype="u1", external=[(value, 0, 4)])
            elif kind == "virtual":
                layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
                layout[:] = h5py.VirtualSource(value, "data", shape=(4,))
                f.create_virtual_dataset("virt", layout)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("soft", "is a soft link"),
        ("external_link", "is an external link"),
        ("external_storage", "is stored in external file"),
        ("virtual", "is a virtual dataset"),
    ],
)
def test_hdf5_that_reads_other_files_is_refused(tmp_path, kind, message):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET!!")
    value = "/bn_data/bn_data/gamma:0" if kind == "soft" else str(secret)
    path = _tiny_keras(tmp_path / "hostile.h5", **{kind: value})
    with pytest.raises(ModelError, match=message) as info:
        import_keras(path)
    assert str(info.value).startswith(str(path))


def test_soft_link_loop_is_refused(tmp_path):
    path = _tiny_keras(tmp_path / "loop.h5")
    with h5py.File(path, "a") as f:
        f["a"] = h5py.SoftLink("/b")
        f["b"] = h5py.SoftLink("/a")
        f.attrs["layer_names"] = ["a"]
    with pytest.raises(ModelError, match="soft link"):
        import_keras(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("names", "layer_names is not a list of names"),
        ("strings", "is not a numeric array"),
        ("nan", "NaN or infinite"),
    ],
)
def test_malformed_hdf5_is_one_error_naming_the_file(tmp_path, damage, message):
    path = _tiny_keras(tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        if damage == "names":
            f.attrs["layer_names"] = 7
        elif damage == "strings":
            del f["bn_data/bn_data/gamma:0"]
            f["bn_data"].create_dataset("bn_data/gamma:0", data=np.array([b"a", b"b"]))
        else:
            f["bn_data/bn_data/gamma:0"][0] = np.nan
    with pytest.raises(ModelError, match=message) as info:
        import_keras(path)
    assert str(info.value).startswith(str(path))


def test_gzip_is_decompressed_up_to_a_cap(tmp_path, monkeypatch):
    from fertool.models import keras

    path = tmp_path / "w.h5.gz"
    path.write_bytes(gzip.compress(_tiny_keras(tmp_path / "w.h5").read_bytes()))
    monkeypatch.setattr(keras, "MAX_GZIP_BYTES", 1024)
    with pytest.raises(ModelError, match="decompresses to more than 1,024 bytes"):
        import_keras(path)
