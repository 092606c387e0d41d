"""Training-step throughput of mmkt's CLIP against Hugging Face's `CLIPModel` (sdpa attention), same configuration and
weights, same run: CLIP ViT-B/16 image tower at 224 px, 12-layer x 512-wide text tower on 77 tokens, 512-d embeddings.

    python benchmarks/clip_throughput.py                  # bf16 autocast, eager and torch.compile, batch 256
    python benchmarks/clip_throughput.py --record         # ... and append the table to benchmarks/RESULTS.md
    python benchmarks/clip_throughput.py --device cpu --tiny --batch 4 --steps 1 --modes eager   # smoke test

A step is forward of both towers + symmetric contrastive loss + backward + fused AdamW, on random data already on the
device. pairs/s is batch x steps / time after --warmup steps (compilation happens there). MFU = achieved training
FLOP/s (3 x analytic forward FLOPs; the causal text attention counted at half) / bf16 matmul FLOP/s measured in the run.
Target (issue 4): at least 1.5x Hugging Face's pairs/s and 40% MFU.
"""
import argparse
import datetime
import time
from pathlib import Path

import torch
import transformers
from transformers import CLIPConfig as HFConfig, CLIPModel

from mmkt_lib.clip import CLIP, contrastive_loss

import sys
sys.path.insert(0, str(Path(__file__).parent))
from vit_throughput import matmul_peak, sync  # noqa: E402


def tower_flops(T: int, D: int, L: int, hidden: int, causal: bool) -> float:
    attn = 2 * 2 * T * T * D * (0.5 if causal else 1.0)
    return L * (2 * T * D * 3 * D + attn + 2 * T * D * D + 2 * 2 * T * D * hidden)


def clip_forward_flops(hf_cfg, ctx: int) -> float:
    v, t = hf_cfg.vision_config, hf_cfg.text_config
    n = (v.image_size // v.patch_size) ** 2
    vis = 2 * n * 3 * v.patch_size ** 2 * v.hidden_size + tower_flops(n + 1, v.hidden_size, v.num_hidden_layers, v.intermediate_size, False)
    txt = tower_flops(ctx, t.hidden_size, t.num_hidden_layers, t.intermediate_size, True)
    proj = 2 * hf_cfg.projection_dim * (v.hidden_size + t.hidden_size)
    return vis + txt + proj


def make_config(tiny: bool) -> HFConfig:
    if tiny:
        return HFConfig(text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=77, eos_token_id=999, bos_token_id=998, pad_token_id=0),
                        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                           image_size=32, patch_size=16), projection_dim=64)
    return HFConfig(text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                     num_attention_heads=8, max_position_embeddings=77, eos_token_id=49407),
                    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                       image_size=224, patch_size=16), projection_dim=512)


def bench(impl, model, device, batch, steps, warmup, dtype, compile_, cfg):
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == 'cuda')
    v, t = cfg.vision_config, cfg.text_config
    px = torch.randn(batch, 3, v.image_size, v.image_size, device=device)
    ids = torch.randint(1, t.vocab_size - 2, (batch, t.max_position_embeddings), device=device)
    ids[:, -1] = t.eos_token_id  # full-length texts: the 77-token case of the target

    def loss_fn(px, ids):
        if impl == 'hf': return model(input_ids=ids, pixel_values=px, return_loss=True).loss
        out = model(px, ids)
        return contrastive_loss(out['image_embeds'], out['text_embeds'], out['logit_scale'])
    fn = torch.compile(loss_fn) if compile_ else loss_fn

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = fn(px, ids)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)

    for _ in range(warmup): step()
    sync(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    sync(device)
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == 'cuda' else float('nan')
    return batch * steps / (time.perf_counter() - t0), mem


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=8)
    ap.add_argument('--modes', default='eager,compile')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--tiny', action='store_true', help='a tiny model (smoke test)')
    ap.add_argument('--record', action='store_true')
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == 'cuda' else None
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = make_config(args.tiny)
    flops = 3 * clip_forward_flops(cfg, cfg.text_config.max_position_embeddings)
    peak = matmul_peak(device, dtype or torch.float32, n=8192 if device.type == 'cuda' else 1024, reps=20 if device.type == 'cuda' else 2)
    gpu = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
    print(f"{flops / 1e9:.1f} GFLOP per pair per training step; matmul peak {peak / 1e12:.3g} TFLOP/s on {gpu}")
    rows = []
    for mode in args.modes.split(','):
        for impl in ('hf', 'mmkt'):
            torch.manual_seed(0)
            hf = CLIPModel._from_config(cfg, attn_implementation='sdpa')
            model = hf if impl == 'hf' else CLIP.from_pretrained(hf)
            pps, mem = bench(impl, model, device, args.batch, args.steps, args.warmup, dtype, mode == 'compile', cfg)
            rows.append((impl, mode, pps, pps * flops / peak, mem))
            print(f"  {impl:5s} {mode:8s} {pps:9.1f} pairs/s   MFU {rows[-1][3]:6.1%}   peak mem {mem:.1f} GiB", flush=True)
            del model, hf
            if device.type == 'cuda': torch.cuda.empty_cache()
    base = {m: p for i, m, p, _, _ in rows if i == 'hf'}
    table = [f"### CLIP {'tiny' if args.tiny else 'ViT-B/16 + 12x512 text, 77 tokens'}, training step, batch {args.batch}, "
             f"{'bf16 autocast' if dtype else 'fp32'}: {datetime.date.today()}, {gpu}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}",
             f"matmul peak measured in the run: {peak / 1e12:.3g} TFLOP/s. Command: `python benchmarks/clip_throughput.py`", '',
             '| model | mode | pairs/s | vs HF | MFU | peak memory (GiB) |', '|---|---|---|---|---|---|']
    table += [f"| {i} | {m} | {p:.1f} | {p / base[m]:.2f}x | {u:.1%} | {mem:.1f} |" for i, m, p, u, mem in rows]
    print('\n'.join(table))
    if args.record:
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f: f.write('\n' + '\n'.join(table) + '\n')


if __name__ == '__main__':
    main()
