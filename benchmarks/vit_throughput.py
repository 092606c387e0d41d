"""Training-step throughput of mmkt's ViT against timm's VisionTransformer, same configuration, same weights, same run.

    python benchmarks/vit_throughput.py                       # ViT-B/16 at 224 px, bf16 autocast, eager and torch.compile
    python benchmarks/vit_throughput.py --record              # ... and append the table to benchmarks/RESULTS.md
    python benchmarks/vit_throughput.py --device cpu --model tiny --image-size 32 --batch 4 --steps 2 --modes eager  # smoke

A step is forward + backward + fused AdamW on random images and labels already on the device (this measures the
model, not the data pipeline). Time is measured with CUDA events over --steps steps after --warmup steps (compilation
happens in the warm-up). MFU = achieved training FLOP/s (3 x the analytic forward FLOPs per image) divided by the bf16
matmul FLOP/s measured in the same run (8192^3 GEMMs), so it is relative to what this GPU actually sustains.
"""
import argparse
import datetime
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from mmkt_lib.vit import ViT


def vit_forward_flops(cfg, num_classes: int) -> float:
    "Analytic forward FLOPs for one image (a multiply-add counts 2)."
    N, D, L = cfg.num_patches, cfg.dim, cfg.depth
    T, hidden = N + 1, int(cfg.dim * cfg.mlp_ratio)
    patch = 2 * N * cfg.in_chans * cfg.patch_size ** 2 * D
    block = 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D + 2 * 2 * T * D * hidden
    return patch + L * block + 2 * D * num_classes


def matmul_peak(device, dtype=torch.bfloat16, n: int = 8192, reps: int = 20) -> float:
    "Sustained FLOP/s of an n x n x n matmul in `dtype` on `device`."
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3): a @ b
    sync(device); t = time.perf_counter()
    for _ in range(reps): a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def bench(model, device, batch, image_size, steps, warmup, dtype, compile_):
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')
    step_model = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    for _ in range(warmup): step()
    sync(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps): step()
    sync(device)
    dt = time.perf_counter() - t
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == 'cuda' else float('nan')
    return batch * steps / dt, mem


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='base', choices=['tiny', 'small', 'base', 'large'])
    ap.add_argument('--image-size', type=int, default=224)
    ap.add_argument('--patch-size', type=int, default=16)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--warmup', type=int, default=10)
    ap.add_argument('--modes', default='eager,compile')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--record', action='store_true')
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == 'cuda' else None
    torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    name = f'vit_{args.model}_patch{args.patch_size}_{args.image_size}'
    make_timm = lambda: timm.create_model(f'vit_{args.model}_patch16_224', pretrained=False, img_size=args.image_size,
                                          patch_size=args.patch_size, num_classes=1000)
    cfg = ViT.from_timm(make_timm()).cfg
    train_flops = 3 * vit_forward_flops(cfg, 1000)
    peak = matmul_peak(device, dtype or torch.float32, n=8192 if device.type == 'cuda' else 1024, reps=20 if device.type == 'cuda' else 2)
    gpu = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
    print(f"{name}: {train_flops / 1e9:.1f} GFLOP per image per training step; measured matmul peak {peak / 1e12:.3g} TFLOP/s on {gpu}")
    rows = []
    for mode in args.modes.split(','):
        for impl in ('timm', 'mmkt'):
            torch.manual_seed(0)
            tm = make_timm()
            model = tm if impl == 'timm' else ViT.from_timm(tm)
            ips, mem = bench(model, device, args.batch, args.image_size, args.steps, args.warmup, dtype, mode == 'compile')
            mfu = ips * train_flops / peak
            rows.append((impl, mode, ips, mfu, mem))
            print(f"  {impl:5s} {mode:8s} {ips:9.1f} img/s   MFU {mfu:6.1%}   peak mem {mem:.1f} GiB", flush=True)
            del model, tm
            if device.type == 'cuda': torch.cuda.empty_cache()
    table = [f"### {name}, training step, batch {args.batch}, {'bf16 autocast' if dtype else 'fp32'}: "
             f"{datetime.date.today()}, {gpu}, torch {torch.__version__}, timm {timm.__version__}",
             f"matmul peak measured in the run: {peak / 1e12:.3g} TFLOP/s ({'bf16' if dtype else 'fp32'} GEMM). "
             f"Command: `python benchmarks/vit_throughput.py`",
             '', '| model | mode | images/s | MFU | peak memory (GiB) |', '|---|---|---|---|---|']
    table += [f"| {impl} | {mode} | {ips:.1f} | {mfu:.1%} | {mem:.1f} |" for impl, mode, ips, mfu, mem in rows]
    print('\n'.join(table))
    if args.record:
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f: f.write('\n' + '\n'.join(table) + '\n')


if __name__ == '__main__':
    main()
