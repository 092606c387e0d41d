"""Patch embedding and ViT: timm and Hugging Face CLIP parity on random weights, attention paths, gradients, sizes."""
import pytest
import timm
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from mmkt_lib.patch import LinearPatchEmbed, PatchEmbed, patchify, resample_pos_embed, unpatchify
from mmkt_lib.vit import Attention, ViT, ViTConfig, attention_rollout, vit_config

TOL = 1e-5


def maxdiff(a, b): return (a - b).abs().max().item()


@pytest.mark.parametrize('kw', [dict(), dict(global_pool='avg'), dict(qkv_bias=False, class_token=True, num_classes=3)])
def test_timm_parity(kw):
    torch.manual_seed(0)
    tm = timm.create_model('vit_tiny_patch16_224', pretrained=False, **kw).eval()
    ours = ViT.from_timm(tm).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert maxdiff(tm.forward_features(x), ours.forward_features(x)) <= TOL
        assert maxdiff(tm(x), ours(x)) <= TOL
        assert maxdiff(tm.forward_head(tm.forward_features(x), pre_logits=True),
                       ours.forward_head(ours.forward_features(x), pre_logits=True)) <= TOL


def test_timm_unsupported_is_refused():
    with pytest.raises(ValueError, match='layer scale'):
        ViT.from_timm(timm.create_model('vit_tiny_patch16_224', pretrained=False, init_values=1e-5))
    with pytest.raises(ValueError, match='no class token'):
        ViT.from_timm(timm.create_model('vit_tiny_patch16_224', pretrained=False, class_token=False, global_pool='avg'))


@pytest.mark.parametrize('act', ['quick_gelu', 'gelu'])
def test_hf_clip_vision_parity_from_saved_directory(tmp_path, act):
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                          image_size=48, patch_size=16, hidden_act=act)).eval()
    hf.save_pretrained(tmp_path)
    ours = ViT.from_hf_clip_vision(tmp_path).eval()
    assert ours.cfg.act == act and ours.cfg.pre_norm and ours.cfg.final_norm == 'pooled' and not ours.cfg.patch_bias
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        out, t = hf(pixel_values=x), ours.forward_features(x)
        assert maxdiff(out.last_hidden_state, t) <= TOL
        assert maxdiff(out.pooler_output, ours.forward_head(t, pre_logits=True)) <= TOL
    same = ViT.from_hf_clip_vision(hf).eval()  # an instance works too
    with torch.no_grad(): assert maxdiff(same.forward_features(x), t) == 0


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    att = Attention(96, 6).eval()
    x = torch.randn(3, 17, 96)
    mask = torch.ones(3, 1, 1, 17, dtype=torch.bool); mask[0, ..., 12:] = False
    with torch.no_grad():
        for m in (None, mask, torch.where(mask, 0.0, -1e4)):
            fused, none = att(x, m)
            expl, w = att(x, m, return_attn=True)
            assert none is None and maxdiff(fused, expl) <= TOL
            assert w.shape == (3, 6, 17, 17) and maxdiff(w.sum(-1), torch.ones(3, 6, 17)) <= TOL
    vit = ViT(vit_config('tiny', image_size=32, patch_size=8, depth=2)).eval()
    with torch.no_grad():
        t1 = vit.forward_features(torch.ones(1, 3, 32, 32))
        t2, maps = vit.forward_features(torch.ones(1, 3, 32, 32), return_attn=True)
    assert maxdiff(t1, t2) <= TOL and len(maps) == 2 and attention_rollout(maps).shape == (1, 17, 17)


@pytest.mark.parametrize('cfg', [dict(), dict(pool='mean', final_norm='pooled', pre_norm=True, act='quick_gelu'),
                                 dict(pos_embed='sincos', drop_path=0.1, dropout=0.1)])
def test_gradients_reach_every_parameter(cfg):
    torch.manual_seed(0)
    vit = ViT(vit_config('tiny', image_size=32, patch_size=8, depth=3, num_classes=5, **cfg))
    vit(torch.randn(4, 3, 32, 32)).logsumexp(-1).sum().backward()
    dead = [n for n, p in vit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_position_interpolation_keeps_output_shape():
    torch.manual_seed(0)
    vit = ViT(vit_config('tiny', image_size=32, patch_size=8, depth=2, num_classes=4)).eval()
    with pytest.raises(ValueError, match='set_image_size'): vit(torch.randn(1, 3, 64, 64))
    dyn = ViT(vit.cfg, dynamic_img_size=True); dyn.load_state_dict(vit.state_dict()); dyn.eval()
    x = torch.randn(2, 3, 64, 48)
    assert dyn(x).shape == (2, 4) and dyn.forward_features(x).shape == (2, 1 + 8 * 6, 192)
    with torch.no_grad(): ref = vit(torch.randn(2, 3, 32, 32).fill_(0.5))
    vit.set_image_size(64)
    assert vit.pos_embed.shape == (1, 1 + 64, 192) and vit(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    vit.set_image_size(32)  # back to the original grid: downsampling the upsampled grid is close, not exact
    with torch.no_grad(): assert vit(torch.randn(2, 3, 32, 32).fill_(0.5)).shape == ref.shape
    s = ViT(vit_config('tiny', image_size=32, patch_size=8, depth=1, pos_embed='sincos', dynamic_img_size=True))
    assert s.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 1 + 36, 192)


def test_patch_embedding_views_and_resampling():
    torch.manual_seed(0)
    conv = PatchEmbed(8, 3, 32)
    lin = LinearPatchEmbed(8, 3, 32).load_from_conv(conv)
    x = torch.randn(2, 3, 24, 40)
    assert maxdiff(conv(x), lin(x)) <= TOL and maxdiff(lin.to_conv()(x), lin(x)) <= TOL
    assert torch.equal(unpatchify(patchify(x, 8), 8, 3, 5), x)
    with pytest.raises(ValueError, match='not divisible by the patch size'): conv(torch.randn(1, 3, 20, 24))
    with pytest.raises(ValueError, match=r'expected images \(B, 3, H, W\)'): conv(torch.randn(3, 24, 24))
    pos = torch.randn(1, 1 + 49, 16)
    from timm.layers import resample_abs_pos_embed
    assert maxdiff(resample_pos_embed(pos, (10, 12)), resample_abs_pos_embed(pos, [10, 12], num_prefix_tokens=1)) <= 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match='not divisible by heads'): ViTConfig(dim=100, heads=3)
    with pytest.raises(ValueError, match='image_size 30 is not divisible'): ViTConfig(image_size=30)
    with pytest.raises(ValueError, match="pool must be one of"): ViTConfig(pool='max')


def test_throughput_benchmark_runs(tmp_path):
    "Smoke test only (tiny model, CPU, two steps): the benchmark's numbers come from a GPU run, never from here."
    import subprocess, sys
    from pathlib import Path
    script = Path(__file__).parent.parent / 'benchmarks' / 'vit_throughput.py'
    r = subprocess.run([sys.executable, str(script), '--device', 'cpu', '--model', 'tiny', '--image-size', '32', '--batch', '2',
                        '--steps', '1', '--warmup', '1', '--modes', 'eager'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert '| timm | eager |' in r.stdout and '| mmkt | eager |' in r.stdout
