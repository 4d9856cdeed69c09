"""DA-CLIP haze scorer (corun.colabator.daclip) on a small randomly initialised configuration: the
released file's key layout, loading it as the authors save it, the controller's wiring, upstream's
preprocessing and score, gradients, and the errors without open_clip or without the weights file."""
from __future__ import annotations

import builtins
import re

import pytest
import torch

from corun.colabator import daclip
from corun.colabator.daclip import (DEGRADATIONS, DACLIPHazeScorer, DACLIPWeightsError, build_daclip,
                                    load_daclip, read_daclip_state_dict)
from corun.colabator.scoring import ScorerWeightsError, create_scorer, score_blocks, weight_map

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def released_keys(vision_layers: int, text_layers: int) -> set[str]:
    """The key set of the authors' DaCLIP state dict, written out from its definition (DA-CLIP's
    daclip_model.py / transformer.py / model.py): a CLIP (text tower at the top level), its image tower
    again as ``visual``, the controller copy with its transformer wrapped, and a logit scale."""
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    stem = ["class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias",
            "ln_post.weight", "ln_post.bias"]
    vit = stem + [f"transformer.resblocks.{i}.{b}" for i in range(vision_layers) for b in block]
    text = ["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
            "ln_final.weight", "ln_final.bias"] + [f"transformer.resblocks.{i}.{b}"
                                                   for i in range(text_layers) for b in block]
    control = stem + [f"transformer.transformer.resblocks.{i}.{b}" for i in range(vision_layers) for b in block]
    control += [f"transformer.zero_modules.{i}.{p}" for i in range(vision_layers) for p in ("weight", "bias")]
    return ({"logit_scale"} | {f"clip.{k}" for k in text} | {f"clip.visual.{k}" for k in vit}
            | {f"visual.{k}" for k in vit} | {f"visual_control.{k}" for k in control})


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip", reason="open_clip not installed (pip install -e '.[clip]')")


@pytest.fixture(scope="module")
def tiny(open_clip):
    torch.manual_seed(0)
    model = build_daclip(TINY).eval()
    with torch.no_grad():                       # a trained-looking model: the controller differs from CLIP
        for p in model.visual_control.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tokenizer(open_clip):
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def scorer(tiny, tokenizer):
    return DACLIPHazeScorer.from_model(tiny, tokenizer, name="daclip:tiny")


def test_state_dict_has_the_released_key_layout(open_clip, tiny):
    assert set(tiny.state_dict()) == released_keys(3, 2)
    with torch.device("meta"):                  # the real ViT-B/32, without allocating it
        full = build_daclip().state_dict()
    assert set(full) == released_keys(12, 12) and len(full) == 631
    shapes = {"clip.token_embedding.weight": (49408, 512), "clip.visual.conv1.weight": (768, 3, 32, 32),
              "visual_control.positional_embedding": (50, 768), "visual_control.proj": (768, 512),
              "visual_control.transformer.zero_modules.11.weight": (768, 768), "clip.text_projection": (512, 512)}
    assert {k: tuple(full[k].shape) for k in shapes} == shapes


def test_released_checkpoint_format_round_trips_through_the_loader(tiny, tmp_path):
    state = tiny.state_dict()
    # as open_clip's trainer saves it: {"epoch", "name", "state_dict" with DDP's module. prefix, ...}
    path = tmp_path / "daclip_ViT-B-32.pt"
    torch.save({"epoch": 30, "name": "daclip", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    loaded = load_daclip(path, config=TINY)
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert loaded.visual is loaded.clip.visual and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 3, 32, 32)
    tokens = torch.randint(1, 49000, (3, 77))
    for a, b in ((loaded.encode_degradation(x), tiny.encode_degradation(x)),
                 (loaded.encode_image(x, control=True)[0], tiny.encode_image(x, control=True)[0]),
                 (loaded.encode_text(tokens), tiny.encode_text(tokens))):      # the rebuilt causal mask
        assert torch.allclose(a, b, atol=1e-6)
    # a bare state dict that stores the shared image tower only once loads too
    bare = {k: v for k, v in state.items() if not k.startswith("visual.")}
    torch.save(bare, tmp_path / "bare.pt", _use_new_zipfile_serialization=False)   # legacy: no mmap
    assert set(read_daclip_state_dict(tmp_path / "bare.pt")) == set(state)
    assert torch.equal(load_daclip(tmp_path / "bare.pt", config=TINY).visual.proj, state["visual.proj"])
    # a file of another architecture is refused by name
    del bare["visual_control.transformer.zero_modules.2.bias"]
    torch.save(bare, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match=r"(?s)does not match DA-CLIP.*zero_modules\.2\.bias"):
        load_daclip(tmp_path / "broken.pt", config=TINY)


def test_controller_is_a_copy_whose_zero_maps_steer_the_frozen_tower_in_reverse(open_clip):
    torch.manual_seed(1)
    model = build_daclip(TINY).eval()
    x = torch.rand(2, 3, 32, 32)
    plain = model.clip.visual(x)                                       # open_clip's own forward
    content, degradation = model.encode_image(x, control=True)
    # fresh from CLIP: the controller is a copy and its zero maps add nothing
    assert torch.allclose(degradation, plain, atol=1e-5) and torch.allclose(content, plain, atol=1e-5)
    with torch.no_grad():
        for p in model.visual_control.transformer.zero_modules.parameters():
            p.normal_(0, 0.1)
    recorded = {}
    main, zeros = model.clip.visual.transformer.resblocks, model.visual_control.transformer.zero_modules
    hooks = [main[0].register_forward_hook(lambda m, i, o: recorded.__setitem__("main0", o)),
             main[1].register_forward_pre_hook(lambda m, i: recorded.__setitem__("main1_in", i[0])),
             zeros[2].register_forward_hook(lambda m, i, o: recorded.__setitem__("z2", o))]
    content, degradation2 = model.encode_image(x, control=True)
    for h in hooks:
        h.remove()
    assert torch.allclose(degradation2, degradation, atol=1e-6)        # the zero maps do not feed the controller
    assert not torch.allclose(content, plain, atol=1e-3)
    # the frozen tower's block 0 output gets the *last* controller block's map (3 blocks: z_2)
    assert torch.allclose(recorded["main1_in"], recorded["main0"] + recorded["z2"], atol=1e-6)


def test_haze_score_is_upstreams_softmax_over_the_ten_degradations(scorer, tiny, tokenizer):
    assert DEGRADATIONS == ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop",
                            "rainy", "shadowed", "snowy", "uncompleted")
    x = torch.rand(4, 3, 32, 32)
    probs = scorer.degradation_probs(x)
    assert probs.shape == (4, 10) and torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)
    # by hand: cosine of the degradation embedding with the 10 word embeddings, times 100, softmax
    text = tiny.encode_text(tokenizer(list(DEGRADATIONS)))
    d = tiny.encode_degradation(daclip.clip_preprocess(x, 32))
    cos = torch.nn.functional.cosine_similarity(d[:, None], text[None], dim=-1)
    assert torch.allclose(probs, (100 * cos).softmax(-1), atol=1e-5)
    p = scorer.raw_scores(x)
    assert torch.equal(p, probs[:, 1]) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(scorer.score(x), 1 - p)                    # normalised: 1 = clear
    assert not scorer.higher_is_better and scorer.raw_range == (0.0, 1.0)
    g, blocks = score_blocks(scorer, torch.rand(2, 3, 64, 96), block=32)
    assert g.shape == (2,) and blocks.shape == (2, 1, 2, 3) and 0 <= blocks.min() and blocks.max() <= 1
    two = DACLIPHazeScorer.from_model(tiny, tokenizer, degradations=("hazy", "snowy"))
    assert torch.allclose(two.raw_scores(x), probs[:, 1] + probs[:, 8], atol=1e-6)
    with pytest.raises(ValueError, match="degradations"):
        DACLIPHazeScorer.from_model(tiny, tokenizer, degradations=("foggy",))


def test_preprocessing_resizes_the_shorter_side_and_crops_the_centre(scorer):
    wide = torch.rand(2, 3, 32, 64)                      # shorter side already 32 = the tiny model's input
    assert torch.allclose(scorer.raw_scores(wide), scorer.raw_scores(wide[..., 16:48]), atol=1e-6)
    small = torch.rand(1, 3, 16, 16)                     # a block smaller than the input: bicubic upsampling
    up = torch.nn.functional.interpolate(small, size=(32, 32), mode="bicubic", antialias=True)
    mean, std = torch.tensor(daclip.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(daclip.CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(daclip.clip_preprocess(small, 32), (up - mean) / std, atol=1e-6)   # not clamped
    big = torch.rand(1, 3, 48, 80)                       # shorter side 48 → 32: 80 → int(32 · 80 / 48) = 53
    down = torch.nn.functional.interpolate(big, size=(32, 53), mode="bicubic", antialias=True)[..., 10:42]
    assert torch.allclose(daclip.clip_preprocess(big, 32), (down - mean) / std, atol=1e-6)


def test_score_is_differentiable_wrt_the_input(scorer):
    x = torch.rand(3, 3, 48, 40, requires_grad=True)
    p = scorer(x)                                        # callable: CORUNLoss's haze_scorer hook
    assert p.shape == (3,) and p.requires_grad
    p.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(q.grad is not None for q in scorer.model.parameters())   # the model stays frozen


def test_weight_map_with_the_daclip_scorer(scorer):
    x = torch.rand(2, 3, 64, 64)
    clear = weight_map(scorer, scorer, x, block=32)
    upstream = weight_map(scorer, scorer, x, block=32, haze_weighting="upstream")
    assert torch.allclose(clear.h_global, upstream.h_global)
    assert torch.allclose(upstream.weight, (upstream.q_map + 1 - upstream.h_map) / 2, atol=1e-6)


def test_missing_weights_fail_early_naming_the_file_and_its_sources(tmp_path):
    path = tmp_path / "pretrained_weights" / "daclip_ViT-B-32.pt"
    for make in (lambda: DACLIPHazeScorer(path), lambda: load_daclip(path),
                 lambda: create_scorer(f"daclip:{path}")):
        with pytest.raises(DACLIPWeightsError) as err:
            make()
        msg = str(err.value)
        assert str(path) in msg and "huggingface.co/weblzw/daclip-uir-ViT-B-32-irsde" in msg
        assert "drive.google.com" in msg and isinstance(err.value, ScorerWeightsError)
    with pytest.raises(ValueError, match=re.escape("daclip:PATH")):
        create_scorer("daclip")


def test_without_open_clip_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "daclip_ViT-B-32.pt"
    torch.save({}, path)
    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip" or name.startswith("open_clip."):
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    for make in (lambda: DACLIPHazeScorer(path), lambda: build_daclip(TINY), lambda: create_scorer(f"daclip:{path}")):
        with pytest.raises(ImportError, match=re.escape("pip install -e '.[clip]'")):
            make()
