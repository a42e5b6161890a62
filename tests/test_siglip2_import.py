"""SigLIP-2 vision towers load exactly, with ordinary and NaFlex inputs (issue 25, item 2).

The reference is the real ``transformers`` model (``Siglip2VisionModel``, the vision tower
of ``Siglip2Model``, ``Siglip2ForImageClassification``) with a tiny random config whose
position table, probe, norms and biases are randomised, saved with ``save_pretrained``
and loaded with ``vitres.from_pretrained``. An ordinary image batch at ``H x W`` must equal
the source run on the same image cut into patches (``spatial_shapes = (H/p, W/p)``, no
padding); a size the patch does not divide is cropped to whole patches (the size policy
``crop`` of every Hugging Face import). A NaFlex batch of images of different grids,
padded to one row length, must give each image's ``pooler_output`` and
``last_hidden_state``. ``vitres.data.naflex_from_pil`` must give the PIL processor's
(``Siglip2ImageProcessorPil``) tensors bit for bit.

Tolerance: 2e-6 (what ``test_import_parity`` allows SigLIP): the source resizes its
position table by a weight matrix and pools with ``nn.MultiheadAttention``'s fused
kernel, vitres by ``F.interpolate`` and separate products (up to 1.2e-6 seen).
"""

import numpy as np
import pytest
import torch
from PIL import Image

import vitres
from vitres.data import naflex_from_pil
from vitres.models.convert.hf import hf_config_fields
from vitres.tokens import forward_naflex, naflex_grid, naflex_images, to_naflex

transformers = pytest.importorskip("transformers")
pil_processor = pytest.importorskip("transformers.models.siglip2.image_processing_pil_siglip2")

PATCH = 4
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=PATCH,
    num_patches=16,  # a 4 x 4 table, native 16 x 16 pixels
)
TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    vocab_size=64,
    max_position_embeddings=8,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
TOLERANCE = 2e-6
# native, non-square both ways, a size the patch divides in neither side, and one patch
SIZES = [(16, 16), (24, 12), (12, 28), (18, 27), (4, 4)]


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Make the position table, probe, norms and biases matter (their inits are constants)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "position_embedding" in name or name.endswith("probe"):
                param.normal_(0, 1.0)
            elif "norm" in name:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def load(source: torch.nn.Module, path) -> torch.nn.Module:
    source.save_pretrained(path)
    return vitres.from_pretrained(path)


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    source = randomise(transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**VISION)))
    return source, load(source, tmp_path_factory.mktemp("siglip2"))


def mixed_images() -> list[torch.Tensor]:
    """Images of different grids: native, wide, tall, one patch, and one filling the row."""
    torch.manual_seed(3)
    sizes = [(16, 16), (8, 24), (20, 12), (4, 4), (16, 20)]
    return [torch.randn(3, h, w) for h, w in sizes]


def test_config_is_read_from_the_source(tower):
    _, ours = tower
    cfg = ours.config
    assert cfg.img_size == (16, 16) and cfg.patch_size == PATCH
    assert (cfg.class_token, cfg.global_pool, cfg.act_layer) == (False, "map", "gelu_tanh")
    assert (cfg.pos_embed_mode, cfg.pos_embed_antialias, cfg.size_policy) == (
        "bilinear",
        True,
        "crop",
    )


@pytest.mark.parametrize("size", SIZES)
def test_image_batch_matches_the_source_on_its_patches(tower, size):
    source, ours = tower
    torch.manual_seed(2)
    x = torch.randn(2, 3, *size)
    whole = (size[0] // PATCH * PATCH, size[1] // PATCH * PATCH)  # the crop to whole patches
    inputs = to_naflex(
        x[..., : whole[0], : whole[1]], PATCH, whole[0] * whole[1] // PATCH**2, False
    )
    with torch.no_grad():
        reference = source(**inputs.as_dict())
        assert worst(ours(x), reference.pooler_output) <= TOLERANCE
        assert worst(ours.forward_features(x), reference.last_hidden_state) <= TOLERANCE


def test_a_size_the_patch_does_not_divide_is_cropped(tower):
    _, ours = tower
    x = torch.randn(1, 3, 18, 27)
    with torch.no_grad():
        assert torch.equal(ours(x), ours(x[..., :16, :24]))


def test_naflex_batch_matches_the_source_per_image(tower):
    source, ours = tower
    inputs = to_naflex(mixed_images(), PATCH, 20, resize=False)
    assert inputs.spatial_shapes.tolist() == [[4, 4], [2, 6], [5, 3], [1, 1], [4, 5]]
    with torch.no_grad():
        reference = source(**inputs.as_dict())
        ours_out = forward_naflex(ours, **inputs.as_dict())
    mask = inputs.pixel_attention_mask.bool()
    assert torch.equal(ours_out.mask, mask)
    assert worst(ours_out.pooled, reference.pooler_output) <= TOLERANCE
    assert worst(ours_out.last_hidden_state[mask], reference.last_hidden_state[mask]) <= TOLERANCE
    assert not ours_out.last_hidden_state[~mask].any()  # padding places hold zeros
    # the same images one at a time, through the ordinary forward
    with torch.no_grad():
        for index, image in enumerate(mixed_images()):
            assert worst(ours(image[None])[0], ours_out.pooled[index]) <= TOLERANCE


def test_naflex_batches_split_by_batch_tokens_give_the_same(tower):
    _, ours = tower
    inputs = to_naflex(mixed_images(), PATCH, 20, resize=False)
    with torch.no_grad():
        whole = forward_naflex(ours, **inputs.as_dict())
        split = forward_naflex(ours, **inputs.as_dict(), batch_tokens=20)
    assert worst(whole.pooled, split.pooled) <= TOLERANCE
    assert worst(whole.last_hidden_state, split.last_hidden_state) <= TOLERANCE


def test_resized_naflex_inputs_match_the_source(tower):
    source, ours = tower
    torch.manual_seed(4)
    images = [torch.randn(3, 37, 23), torch.randn(3, 9, 50), torch.randn(3, 16, 16)]
    inputs = to_naflex(images, PATCH, max_num_patches=12)
    grids = [tuple(naflex_grid(*image.shape[-2:], PATCH, 12)) for image in images]
    assert [tuple(s) for s in inputs.spatial_shapes.tolist()] == grids
    with torch.no_grad():
        reference = source(**inputs.as_dict())
        assert worst(forward_naflex(ours, **inputs.as_dict()).pooled, reference.pooler_output) <= (
            TOLERANCE
        )


def test_pair_directory_and_classifier_load(tmp_path):
    pair = transformers.Siglip2Config(vision_config=VISION, text_config=TEXT)
    source = randomise(transformers.Siglip2Model(pair))
    ours = load(source, tmp_path / "pair")
    inputs = to_naflex(mixed_images(), PATCH, 20, resize=False)
    with torch.no_grad():
        reference = source.vision_model(**inputs.as_dict()).pooler_output
        assert worst(forward_naflex(ours, **inputs.as_dict()).pooled, reference) <= TOLERANCE

    labelled = transformers.Siglip2Config(vision_config=VISION, text_config=TEXT, num_labels=5)
    classifier = randomise(transformers.Siglip2ForImageClassification(labelled))
    ours = load(classifier, tmp_path / "classifier")
    # it averages the normed tokens (its vision tower's attention pool is unused)
    assert (ours.config.global_pool, ours.config.num_classes, ours.attn_pool) == ("avg", 5, None)
    with torch.no_grad():
        reference = classifier(**inputs.as_dict()).logits
        assert worst(forward_naflex(ours, **inputs.as_dict()).pooled, reference) <= TOLERANCE
        x = torch.randn(2, 3, 12, 20)
        plain = classifier(**to_naflex(x, PATCH, 15, resize=False).as_dict()).logits
        assert worst(ours(x), plain) <= TOLERANCE


def test_patch_layout_and_grid_are_the_processors():
    torch.manual_seed(5)
    image = torch.randn(3, 12, 20)
    inputs = to_naflex([image], PATCH, 18, resize=False)
    patches = pil_processor.convert_image_to_patches(image.numpy(), PATCH)
    expected, mask = pil_processor.pad_along_first_dim(patches, 18)
    assert torch.equal(inputs.pixel_values[0], torch.from_numpy(expected))
    assert torch.equal(inputs.pixel_attention_mask[0], torch.from_numpy(mask))
    assert torch.equal(naflex_images(**inputs.as_dict(), patch_size=PATCH)[0], image)
    for height in (1, 7, 16, 33, 224, 500, 1001):
        for width in (1, 9, 16, 64, 300, 777):
            for patch, budget in ((16, 256), (16, 64), (14, 729), (4, 3)):
                rows, cols = naflex_grid(height, width, patch, budget)
                reference = pil_processor.get_image_size_for_max_num_patches(
                    height, width, patch, budget
                )
                assert (rows * patch, cols * patch) == reference, (height, width, patch, budget)


def test_pil_images_become_the_pil_processors_inputs_bit_for_bit(tower):
    source, ours = tower
    rng = np.random.default_rng(0)
    sizes = [(37, 23), (100, 41), (16, 16), (5, 300)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    for patch, budget in ((PATCH, 12), (16, 64)):
        processor = pil_processor.Siglip2ImageProcessorPil(patch_size=patch, max_num_patches=budget)
        expected = processor(images, return_tensors="pt")
        for name, value in naflex_from_pil(images, patch, budget).as_dict().items():
            assert value.dtype == expected[name].dtype and torch.equal(value, expected[name]), name
    inputs = naflex_from_pil(images, PATCH, 12)
    with torch.no_grad():
        reference = source(**inputs.as_dict()).pooler_output
        assert worst(forward_naflex(ours, **inputs.as_dict()).pooled, reference) <= TOLERANCE
    with pytest.raises(ValueError, match="image 0 is a L image; naflex_from_pil takes RGB"):
        naflex_from_pil([images[0].convert("L")], PATCH, 12)


def test_naflex_inputs_that_do_not_fit_are_refused(tower):
    _, ours = tower
    inputs = to_naflex(mixed_images(), PATCH, 20, resize=False)
    values, mask, shapes = inputs.pixel_values, inputs.pixel_attention_mask, inputs.spatial_shapes
    holed = mask.clone()
    holed[0, 3] = 0
    with pytest.raises(ValueError, match="image 0: pixel_attention_mask must mark its first 16"):
        forward_naflex(ours, values, holed, shapes)
    too_big = shapes.clone()
    too_big[1] = torch.tensor([5, 5])
    with pytest.raises(ValueError, match="image 1: spatial shape 5x5 does not fit a row of 20"):
        forward_naflex(ours, values, mask, too_big)
    with pytest.raises(ValueError, match="values per patch, not a multiple of the 4x4 patch"):
        forward_naflex(ours, values[..., :-1], mask, shapes)
    with pytest.raises(ValueError, match="which the patch 4 does not divide"):
        to_naflex([torch.randn(3, 10, 8)], PATCH, 20, resize=False)


def test_a_table_that_is_not_square_is_refused():
    config = {"model_type": "siglip2_vision_model", **VISION, "num_patches": 20}
    state = {"attn_pool.latent": torch.zeros(1, 1, 32)}
    with pytest.raises(ValueError, match="SigLIP-2 with num_patches=20 is not supported"):
        hf_config_fields(config, state)


# ------------------------------------------------- the same trap in SigLIP's and CLIP's classifiers
TOWER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=7,
    image_size=28,
)


def test_siglip_classifier_averages_the_tokens(tmp_path):
    """``SiglipForImageClassification`` keeps its tower's attention pool but classifies the
    mean of the normed tokens; reading the pool instead was silently wrong (1.3 max |diff|)."""
    config = transformers.SiglipConfig(vision_config=TOWER, text_config=TEXT, num_labels=5)
    source = randomise(transformers.SiglipForImageClassification(config))
    ours = load(source, tmp_path)
    assert (ours.config.global_pool, ours.attn_pool) == ("avg", None)
    torch.manual_seed(6)
    for size in [(28, 28), (42, 28), (38, 51)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            reference = source(pixel_values=x, interpolate_pos_encoding=True).logits
            assert worst(ours(x), reference) == 0.0, size


def test_clip_classifier_is_refused(tmp_path):
    """It averages the patch tokens before CLIP's post-LayerNorm, which vitres (the final
    norm on every token) cannot express: refused by name, not loaded wrong (1.9 max |diff|)."""
    config = transformers.CLIPConfig(vision_config=TOWER, text_config=TEXT, num_labels=5)
    transformers.CLIPForImageClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="CLIPForImageClassification is not supported"):
        vitres.from_pretrained(tmp_path)
