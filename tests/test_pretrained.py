"""models.pretrained: Keras equivalence, torchvision round trip, bad weight files, format
detection and the normalisation it implies, checks before loading, stride placement.

The reference is Keras 3 on the JAX backend (tests/conftest.py sets KERAS_BACKEND=jax):
``keras.applications.ResNet50`` with random weights and random BatchNorm statistics, so
that the folding of the convolution biases into the BatchNorm means is really exercised.
"""

import pickle
import re
import zipfile
from functools import partial

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util
from pretrained_exporters import save_torchvision_safetensors, torchvision_state_dict

from models import get_model
from models.pretrained import (
    KERAS_BATCH_NORM_EPSILON,
    KERAS_CAFFE_NORMALIZATION,
    KERAS_LEGACY_BATCH_NORM_EPSILON,
    Normalization,
    check_pretrained,
    load_keras_h5_weights,
    load_pretrained,
    load_torchvision_weights,
    preprocessing_for,
    weight_format,
)

# Keras' own variables warn on NumPy 2 conversion; that is Keras' business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

IMAGE_SIZE = 64
NUM_CLASSES = 10
# Logits are O(5); float32 rounding through 53 convolutions stays far below this.
LOGITS_ATOL = 1e-4


def _random_variables(model, image_shape, seed):
    """Random variables for ``model`` without running its initialisers (slow to compile).

    Parameters are Gaussian, BatchNorm means Gaussian and variances in [0.5, 1.5].
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(image_shape))

    def draw(path, leaf):
        if path[-1].key == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _randomise(keras_model, rng):
    import keras

    for layer in keras_model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in weights)
            weights = [
                rng.uniform(0.5, 1.5, gamma),
                rng.normal(0, 0.1, beta),
                rng.normal(0, 0.1, mean),
                rng.uniform(0.5, 1.5, var),
            ]
        else:  # Conv2D and Dense: kernel and bias
            kernel, bias = weights
            fan_in = np.prod(kernel.shape[:-1])
            weights = [rng.normal(0, fan_in**-0.5, kernel.shape), rng.normal(0, 0.1, bias.shape)]
        layer.set_weights([w.astype(np.float32) for w in weights])


def _write_classic_h5(path, keras_model, rename=lambda name: name):
    """A Keras 2 style weights-only file, as the official ImageNet files are laid out."""
    with h5py.File(path, "w") as file:
        layers = keras_model.layers
        file.attrs["layer_names"] = [rename(layer.name).encode() for layer in layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.2.4"
        for layer in layers:
            name = rename(layer.name)
            group = file.create_group(name)
            weight_names = [f"{name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            for weight_name, weight in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(weight_name, data=weight.numpy())


def _legacy_name(name):
    """keras.applications layer names -> the older keras_applications ResNet50 names."""
    fixed = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1", "predictions": "fc1000"}
    if name in fixed:
        return fixed[name]
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if match is None:
        return name
    stage, block, index, kind = match.groups()
    branch = "1" if index == "0" else "2" + "abc"[int(index) - 1]
    letter = "abcdefghijklmnopqrstuvw"[int(block) - 1]
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{letter}_branch{branch}"


KERAS_FILES = {
    "keras3": "resnet50.weights.h5",  # Keras 3 save_weights
    "full_model": "resnet50_full.h5",  # Keras 3 model.save, legacy format
    "classic": "resnet50_classic.h5",  # Keras 2 save_weights / ImageNet file
    "legacy_names": "resnet50_legacy_names.h5",  # old keras_applications
}


def _write_keras_reference(directory):
    """A random Keras ResNet50's weights in four files, random images and its logits."""
    import keras

    rng = np.random.default_rng(0)
    keras_model = keras.applications.ResNet50(
        weights=None,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        classes=NUM_CLASSES,
        classifier_activation=None,
    )
    _randomise(keras_model, rng)
    images = rng.normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    logits = np.asarray(keras_model(images, training=False))
    files = {name: directory / file for name, file in KERAS_FILES.items()}
    keras_model.save_weights(files["keras3"])
    keras_model.save(files["full_model"])
    _write_classic_h5(files["classic"], keras_model)
    _write_classic_h5(files["legacy_names"], keras_model, _legacy_name)
    # Keras itself reads the hand-written classic file back: it is the real layout.
    saved = [w.numpy() for w in keras_model.weights]
    keras_model.set_weights([np.zeros_like(w) for w in saved])
    keras_model.load_weights(files["classic"])
    for before, after in zip(saved, keras_model.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    np.savez(directory / "reference.npz", images=images, logits=logits)


@pytest.fixture
def keras_reference(session_cache):
    """Random Keras ResNet50, its logits on random images, and its weights in four files
    (made once per session)."""
    directory = session_cache.directory("keras-resnet50", _write_keras_reference)
    with np.load(directory / "reference.npz") as reference:
        images, logits = reference["images"], reference["logits"]
    return images, logits, {name: directory / file for name, file in KERAS_FILES.items()}


@pytest.fixture(scope="session")
def resnet50_v1():
    model = get_model("resnet50", num_classes=NUM_CLASSES, stride_placement="v1")
    return model, _random_variables(model, (1, IMAGE_SIZE, IMAGE_SIZE, 3), seed=1)


@pytest.mark.parametrize("layout", ["keras3", "full_model", "classic"])
def test_keras_resnet50_logits_match(keras_reference, resnet50_v1, layout):
    images, keras_logits, files = keras_reference
    model, variables = resnet50_v1
    loaded = load_pretrained(files[layout], variables, stride_placement="v1", include_head=True)
    logits = np.asarray(model.apply(loaded, images, train=False))
    max_abs_diff = float(np.abs(logits - keras_logits).max())
    print(f"{layout}: max |logits - keras logits| = {max_abs_diff:.2e}")
    assert np.abs(keras_logits).max() > 1.0  # a non-degenerate comparison
    assert max_abs_diff < LOGITS_ATOL


def test_legacy_keras_layer_names_and_their_epsilon(keras_reference, resnet50_v1):
    images, keras_logits, files = keras_reference
    model, variables = resnet50_v1
    loaded = load_keras_h5_weights(
        files["legacy_names"],
        variables,
        include_head=True,
        keras_epsilon=KERAS_BATCH_NORM_EPSILON,  # the reference model's epsilon
    )
    logits = np.asarray(model.apply(loaded, images, train=False))
    np.testing.assert_allclose(logits, keras_logits, atol=LOGITS_ATOL)
    # By default the old names imply the old model's epsilon (1e-3): variances shift by it.
    default = load_keras_h5_weights(files["legacy_names"], variables, include_head=True)
    shift = KERAS_LEGACY_BATCH_NORM_EPSILON - KERAS_BATCH_NORM_EPSILON
    np.testing.assert_allclose(
        default["batch_stats"]["stem_bn"]["var"] - loaded["batch_stats"]["stem_bn"]["var"],
        shift,
        rtol=1e-4,
    )


def test_keras_biases_fold_into_means(keras_reference, resnet50_v1):
    _, _, files = keras_reference
    _, variables = resnet50_v1
    loaded = load_keras_h5_weights(files["classic"], variables)
    with h5py.File(files["classic"]) as file:
        bias = np.asarray(file["conv2_block1_0_conv/conv2_block1_0_conv/bias:0"])
        mean = np.asarray(file["conv2_block1_0_bn/conv2_block1_0_bn/moving_mean:0"])
        variance = np.asarray(file["conv2_block1_0_bn/conv2_block1_0_bn/moving_variance:0"])
    shortcut_bn = loaded["batch_stats"]["stage1_block1"]["shortcut_bn"]
    np.testing.assert_allclose(shortcut_bn["mean"], mean - bias, rtol=1e-6)
    np.testing.assert_allclose(shortcut_bn["var"], variance + (1.001e-5 - 1e-5), rtol=1e-6)


def test_head_is_kept_unless_asked(keras_reference, resnet50_v1):
    _, _, files = keras_reference
    _, variables = resnet50_v1
    body_only = load_pretrained(files["classic"], variables)
    with_head = load_pretrained(files["classic"], variables, include_head=True)
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(
            body_only["params"]["head"][leaf], variables["params"]["head"][leaf]
        )
        assert not np.array_equal(
            with_head["params"]["head"][leaf], variables["params"]["head"][leaf]
        )
    without_head = {k: v for k, v in body_only["params"].items() if k != "head"}
    jax.tree.map(
        np.testing.assert_array_equal,
        without_head,
        {k: v for k, v in with_head["params"].items() if k != "head"},
    )
    # A head for other classes: the body loads, the file's 10-way head is ignored.
    model = get_model("resnet50", num_classes=3, stride_placement="v1")
    fresh = _random_variables(model, (1, 32, 32, 3), seed=2)
    loaded = load_pretrained(files["classic"], fresh)
    assert loaded["params"]["head"]["kernel"].shape == (2048, 3)
    with pytest.raises(ValueError, match=r"predictions/kernel: expected shape \(2048, 3\), found"):
        load_pretrained(files["classic"], fresh, include_head=True)


def test_stride_placement_is_checked(keras_reference, resnet50_v1, tmp_path):
    _, _, files = keras_reference
    _, variables = resnet50_v1
    with pytest.raises(ValueError, match="trained with stride_placement='v1'.*has.*'v1.5'"):
        load_pretrained(files["classic"], variables, stride_placement="v1.5")
    path = tmp_path / "resnet50.safetensors"
    save_torchvision_safetensors(variables, path)
    with pytest.raises(ValueError, match="trained with stride_placement='v1.5'.*has.*'v1'"):
        load_pretrained(path, variables, stride_placement="v1")


def test_torchvision_key_layout(resnet50_v1):
    _, variables = resnet50_v1
    state = torchvision_state_dict(variables)
    # 53 convolutions, 53 BatchNorms x 4 tensors, fc weight and bias.
    assert len(state) == 53 + 53 * 4 + 2
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256,),
        "layer2.3.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.bias": (1024,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.bn3.running_mean": (2048,),
        "fc.weight": (NUM_CLASSES, 2048),
        "fc.bias": (NUM_CLASSES,),
    }
    for key, shape in expected_shapes.items():
        assert state[key].shape == shape, key
    assert "layer1.1.downsample.0.weight" not in state
    # Kernel [h, w, in, out] -> weight [out, in, h, w], element by element.
    kernel = np.asarray(variables["params"]["stage2_block1"]["conv2"]["kernel"])
    np.testing.assert_array_equal(state["layer2.0.conv2.weight"][5, 7, 0, 2], kernel[0, 2, 7, 5])


@pytest.mark.parametrize("name", ["resnet50_small", "resnet18_small"])
def test_torchvision_safetensors_round_trip(name, tmp_path):
    # Shallow and narrow for speed; still two stages, projections and repeated blocks.
    model = get_model(
        name, num_classes=4, stride_placement="v1.5", stage_sizes=[2, 1], num_filters=8
    )
    images = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)
    source = _random_variables(model, images.shape, seed=0)
    path = tmp_path / f"{name}.safetensors"
    save_torchvision_safetensors(source, path)
    target = _random_variables(model, images.shape, seed=1)
    loaded = load_torchvision_weights(path, target, stride_placement="v1.5", include_head=True)
    assert jax.tree.structure(loaded) == jax.tree.structure(source)
    jax.tree.map(np.testing.assert_array_equal, loaded, source)
    evaluate = jax.jit(partial(model.apply, train=False))
    np.testing.assert_array_equal(evaluate(loaded, images), evaluate(source, images))


def test_bad_safetensors_file_lists_every_offending_key(tmp_path):
    model = get_model("resnet_tiny", num_classes=4, stage_sizes=[1, 2, 1])
    variables = _random_variables(model, (1, 8, 8, 3), seed=0)
    state = torchvision_state_dict(variables)
    del state["layer2.1.conv2.weight"]
    del state["bn1.running_mean"]
    state["layer3.0.conv1.weight"] = np.zeros((32, 16, 5, 5), np.float32)
    state["layer5.0.conv1.weight"] = np.zeros((3, 3), np.float32)
    state["bn1.num_batches_tracked"] = np.zeros((), np.int64)  # torch's counter: ignored
    path = tmp_path / "broken.safetensors"
    safetensors.numpy.save_file(state, path)
    with pytest.raises(ValueError) as error:
        load_pretrained(path, variables)
    message = str(error.value)
    assert "broken.safetensors" in message and "nothing was loaded" in message
    assert "layer2.1.conv2.weight: expected shape (16, 16, 3, 3)" in message
    assert "bn1.running_mean: expected shape (8,)" in message
    assert "layer3.0.conv1.weight: expected shape (32, 16, 3, 3), found (32, 16, 5, 5)" in message
    assert "layer5.0.conv1.weight: shape (3, 3)" in message
    assert "num_batches_tracked" not in message
    assert "2 missing" in message and "1 mis-shaped" in message and "1 extra" in message


def test_bad_keras_file_lists_offending_keys(keras_reference, resnet50_v1, tmp_path):
    _, _, files = keras_reference
    _, variables = resnet50_v1
    small = get_model("resnet50_small", num_classes=NUM_CLASSES, stride_placement="v1")
    small_variables = jax.eval_shape(small.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError) as error:
        load_keras_h5_weights(files["classic"], small_variables)
    message = str(error.value)
    # The small-input stem is 3x3 with 16 filters; the file's is 7x7 with 64.
    assert "conv1_conv/kernel: expected shape (3, 3, 3, 16), found (7, 7, 3, 64)" in message
    assert "conv5_block3_3_conv/kernel: expected shape (1, 1, 128, 512)" in message
    # A ResNet18 has no bottlenecks: the file's third convolutions have no place.
    resnet18 = get_model("resnet18", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"extra tensors.*\n(.*\n)*  conv2_block1_3_conv/kernel"):
        load_keras_h5_weights(
            files["classic"],
            jax.eval_shape(resnet18.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))),
        )
    with h5py.File(files["classic"]) as file, h5py.File(tmp_path / "cut.h5", "w") as cut:
        for key, value in file.attrs.items():
            cut.attrs[key] = value
        for layer in file:
            file.copy(file[layer], cut, layer)
        del cut["conv3_block2_2_bn/conv3_block2_2_bn/moving_variance:0"]
        names = list(cut["conv3_block2_2_bn"].attrs["weight_names"])
        cut["conv3_block2_2_bn"].attrs["weight_names"] = names[:3]
    with pytest.raises(
        ValueError, match=r"1 missing tensors:\n  conv3_block2_2_bn/moving_variance"
    ):
        load_pretrained(tmp_path / "cut.h5", variables)


def test_unreadable_files_raise_clear_errors(tmp_path):
    variables = _random_variables(get_model("resnet_tiny", num_classes=2), (1, 8, 8, 3), seed=0)
    with pytest.raises(ValueError, match="missing.safetensors does not exist"):
        load_pretrained(tmp_path / "missing.safetensors", variables)
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="notes.txt is neither HDF5.*safetensors.*PyTorch"):
        load_pretrained(tmp_path / "notes.txt", variables)
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.h5: neither the classic layout.*\['x'\]"):
        load_pretrained(tmp_path / "other.h5", variables)
    with pytest.raises(ValueError, match=r"variables of a models.resnet.ResNet.*\['params'\]"):
        load_pretrained(tmp_path / "other.h5", {"params": variables["params"]})


def test_pth_without_torch_names_the_alternatives(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed: .pth files are read, not refused")
    path = tmp_path / "resnet50.pth"
    with zipfile.ZipFile(path, "w") as archive:  # torch.save writes a zip archive
        archive.writestr("resnet50/data.pkl", b"")
    variables = _random_variables(get_model("resnet_tiny", num_classes=2), (1, 8, 8, 3), seed=0)
    with pytest.raises(ImportError, match="resnet50.pth needs torch.*safetensors"):
        load_pretrained(path, variables)


def test_every_leaf_is_replaced(keras_reference, resnet50_v1):
    _, _, files = keras_reference
    _, variables = resnet50_v1
    loaded = load_pretrained(files["keras3"], variables, include_head=True)
    before = traverse_util.flatten_dict(variables)
    after = traverse_util.flatten_dict(loaded)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert unchanged == []


# --------------------------------------------------------------------------- format and
# normalisation, checking before loading, stride placement of basic blocks


def _tiny(stride_placement="v1.5", **overrides):
    """A small bottleneck ResNet: two stages, so its second stage down-samples."""
    overrides = {"stage_sizes": [1, 1], "num_filters": 4, **overrides}
    return get_model(
        "resnet50_small", num_classes=3, stride_placement=stride_placement, **overrides
    )


def test_normalization_apply_hand_computed():
    images = jnp.asarray([[[[0.2, 0.5, 0.9]]]], jnp.float32)  # one RGB pixel
    plain = Normalization((0.5, 0.25, 0.0), (1.0, 0.5, 2.0)).apply(images)
    np.testing.assert_allclose(np.asarray(plain)[0, 0, 0], [-0.3, 0.5, 0.45], rtol=1e-6)
    reversed_ = Normalization((0.5, 0.25, 0.0), (1.0, 0.5, 2.0), True).apply(images)
    np.testing.assert_allclose(np.asarray(reversed_)[0, 0, 0], [0.4, 0.5, 0.1], rtol=1e-6)


def test_preprocessing_follows_the_file_format(tmp_path, keras_reference):
    _, _, files = keras_reference
    pixel_rgb = np.array([0.2, 0.5, 0.9], np.float32)
    images = jnp.asarray(pixel_rgb.reshape(1, 1, 1, 3))
    # torchvision's transforms.Normalize with ImageNet's statistics, and no weights alike.
    imagenet = (pixel_rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    model = get_model("resnet_tiny", num_classes=2)
    path = tmp_path / "tiny.safetensors"
    save_torchvision_safetensors(_random_variables(model, (1, 8, 8, 3), seed=0), path)
    for weights in (None, path):
        normalization = preprocessing_for(weights)
        np.testing.assert_allclose(normalization.apply(images)[0, 0, 0], imagenet, rtol=1e-5)
    # Keras' "caffe" preprocess_input: BGR, in [0, 255], minus the ImageNet mean in BGR.
    caffe = pixel_rgb[::-1] * 255 - [103.939, 116.779, 123.68]
    for layout in ("classic", "keras3"):
        keras_normalization = preprocessing_for(files[layout])
        np.testing.assert_allclose(
            keras_normalization.apply(images)[0, 0, 0], caffe, rtol=1e-5, atol=1e-4
        )
    # Hashable and equal by value: the trainer keys compiled programs on it.
    assert {preprocessing_for(None): 1}[preprocessing_for(path)] == 1
    assert preprocessing_for(files["classic"]) == KERAS_CAFFE_NORMALIZATION
    (tmp_path / "hostname").write_text("build-host\n")
    with pytest.raises(ValueError, match="hostname is neither HDF5.*safetensors.*PyTorch"):
        preprocessing_for(tmp_path / "hostname")


def test_hdf5_with_a_user_block_is_recognised(tmp_path):
    path = tmp_path / "with_user_block.h5"
    with h5py.File(path, "w", userblock_size=512) as file:
        file.create_dataset("x", data=np.zeros(3))
    assert path.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"  # the signature is not at 0
    assert weight_format(path) == "hdf5"


def test_safetensors_header_length_128_mod_256_is_not_read_as_a_pickle(tmp_path):
    model = _tiny()
    variables = _random_variables(model, (1, 8, 8, 3), seed=4)
    state = torchvision_state_dict(variables, with_counters=True)
    # safetensors pads its JSON header to a multiple of 8 bytes; lengthen the metadata
    # until the header length is 128 mod 256, so the file's first byte is 0x80.
    for padding in range(264):  # 32 multiples of 8 cover every residue
        content = safetensors.numpy.save(state, metadata={"format": "pt", "pad": "x" * padding})
        if int.from_bytes(content[:8], "little") % 256 == 128:
            break
    else:
        raise AssertionError("no padding gave a header length of 128 mod 256")
    assert content[0] == 0x80  # what a PyTorch legacy pickle starts with, too
    path = tmp_path / "resnet.safetensors"
    path.write_bytes(content)
    assert weight_format(path) == "safetensors"
    loaded = load_pretrained(path, variables, stride_placement="v1.5", include_head=True)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    assert preprocessing_for(path) == Normalization(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    # A real legacy pickle (protocol 2 starts with 0x80 0x02) is still a PyTorch file.
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"conv1.weight": [0.0]}, protocol=2))
    assert weight_format(legacy) == "torch"


def test_check_pretrained_checks_shapes_without_loading(tmp_path):
    model = _tiny()
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert isinstance(shapes["params"]["stem_conv"]["kernel"], jax.ShapeDtypeStruct)
    good = tmp_path / "good.safetensors"
    save_torchvision_safetensors(_random_variables(model, (1, 8, 8, 3), seed=0), good)
    assert check_pretrained(good, shapes, stride_placement="v1.5") is None
    # A model of another width: every tensor is mis-shaped, all named with the file.
    wider = _tiny(num_filters=8)
    wider_shapes = jax.eval_shape(wider.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"good.safetensors does not match the model") as error:
        check_pretrained(good, wider_shapes)
    assert "conv1.weight: expected shape (8, 3, 3, 3), found (4, 3, 3, 3)" in str(error.value)
    with pytest.raises(ValueError, match="good.safetensors holds weights trained with"):
        check_pretrained(good, shapes, stride_placement="v1")
    (tmp_path / "hostname").write_text("build-host\n")
    with pytest.raises(ValueError, match="weight file .*hostname is neither HDF5"):
        check_pretrained(tmp_path / "hostname", shapes)
    with pytest.raises(ValueError, match="weight file .*absent.h5 does not exist"):
        check_pretrained(tmp_path / "absent.h5", shapes)
    with pytest.raises(ValueError, match=f"weight file {re.escape(str(tmp_path))} is not a"):
        check_pretrained(tmp_path, shapes)
    # Data cut short after an intact header: named, as a ValueError.
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors cannot be read"):
        check_pretrained(truncated, shapes)


def test_check_pretrained_refuses_a_pth_without_torch_as_a_value_error(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed: .pth files are read, not refused")
    path = tmp_path / "resnet50.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("resnet50/data.pkl", b"")
    shapes = jax.eval_shape(_tiny().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="resnet50.pth needs torch"):
        check_pretrained(path, shapes)


def test_basic_block_models_accept_either_stride_placement(tmp_path):
    # Basic blocks have one place for the stride: both placements are the same model.
    images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 16, 16, 3)), jnp.float32)
    models_by_placement = {
        placement: get_model(
            "resnet18_small",
            num_classes=3,
            stride_placement=placement,
            stage_sizes=[1, 1],
            num_filters=4,
        )
        for placement in ("v1", "v1.5")
    }
    source = _random_variables(models_by_placement["v1.5"], images.shape, seed=6)
    path = tmp_path / "resnet18.safetensors"
    save_torchvision_safetensors(source, path)
    logits = {}
    for placement, model in models_by_placement.items():
        check_pretrained(path, source, stride_placement=placement)
        loaded = load_pretrained(path, source, stride_placement=placement, include_head=True)
        logits[placement] = np.asarray(model.apply(loaded, images, train=False))
    np.testing.assert_array_equal(logits["v1"], logits["v1.5"])
    # A down-sampling bottleneck does have a placement: the same file layout is refused.
    bottleneck = _tiny()
    bottleneck_path = tmp_path / "bottleneck.safetensors"
    variables = _random_variables(bottleneck, (1, 8, 8, 3), seed=7)
    save_torchvision_safetensors(variables, bottleneck_path)
    with pytest.raises(ValueError, match="trained with stride_placement='v1.5'.*has.*'v1'"):
        load_pretrained(bottleneck_path, variables, stride_placement="v1")
    # A bottleneck model of one stage never down-samples in a block: no placement either.
    one_stage = _tiny(stage_sizes=[2])
    one_stage_variables = _random_variables(one_stage, (1, 8, 8, 3), seed=8)
    one_stage_path = tmp_path / "one_stage.safetensors"
    save_torchvision_safetensors(one_stage_variables, one_stage_path)
    check_pretrained(one_stage_path, one_stage_variables, stride_placement="v1")


def _real_torchvision_resnet50():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    network = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return torch, network.eval()


@pytest.mark.parametrize("file_format", ["safetensors", "pth"])
def test_real_torchvision_resnet50_in_both_formats(tmp_path, file_format):
    torch, network = _real_torchvision_resnet50()
    import safetensors.torch

    path = tmp_path / f"resnet50.{file_format}"
    if file_format == "safetensors":
        safetensors.torch.save_file(network.state_dict(), path)
    else:
        torch.save(network.state_dict(), path)
    assert weight_format(path) == ("safetensors" if file_format == "safetensors" else "torch")
    model = get_model("resnet50", num_classes=1000, stride_placement="v1.5")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    check_pretrained(path, shapes, stride_placement="v1.5", include_head=True)
    loaded = load_pretrained(path, shapes, stride_placement="v1.5", include_head=True)
    images = np.random.default_rng(9).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    logits = np.asarray(model.apply(loaded, images, train=False))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(logits, expected, atol=LOGITS_ATOL * 10)
