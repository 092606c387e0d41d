"""Inference speed of a finished run on this machine: cold start of `mmkt predict`, then per-image latency and images
per second of float PyTorch, every quantized configuration (chapter 19b) and ONNX Runtime (chapter 19).

    python benchmarks/inference.py                       # the demo run (runs/demo), one thread
    python benchmarks/inference.py --run RUN --threads 2 --record

Latency: the median over --runs calls of one image (the CLIP image embedding; one question answered by the VQA model;
for PyTorch also one beam-search caption of the first test image), after warm-up. Throughput: images per second at
batch 64 (one question per image for VQA). The configurations are measured in turn, --rounds times over, and each
number is the median of its rounds: on a shared machine a slow spell then falls on every configuration alike. Cold
start: the wall time of a fresh `mmkt predict` process (imports, loading the run, one question, one caption), median
of --cold runs, next to the time of `import mmkt_lib.cli` alone.
"""
import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmkt_lib.deploy import ImageEncoder, PairedVQA, export_requirements, export_run
from mmkt_lib.pipeline import load_run
from mmkt_lib.quantize import (config_name, configurations, in_turn, latency, median_ms, quantize_pipeline,
                               quantize_requirements)

QUESTION = 'what color is the small square?'


def cold_start(run: Path, image: Path, n: int) -> dict:
    "Median seconds of a fresh `mmkt predict` process, and of importing the CLI alone."
    mmkt = Path(sys.executable).parent / 'mmkt'
    def wall(cmd):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - t
    predict = [wall([str(mmkt), 'predict', '--run', str(run), '--image', str(image), '--question', QUESTION])
               for _ in range(n)]
    imports = [wall([sys.executable, '-c', 'import mmkt_lib.cli']) for _ in range(n)]
    return {'predict_s': round(statistics.median(predict), 2), 'import_s': round(statistics.median(imports), 2)}


def inputs(pipe, batch: int) -> tuple:
    "`batch` random images and as many copies of one question."
    s = pipe.cfg.image_size
    q = pipe.tok([QUESTION] * batch, return_tensors='pt')
    return torch.rand(batch, 3, s, s), q['input_ids'], q['attention_mask']


@torch.no_grad()
def torch_speed(pipe, runs: int) -> dict:
    "Latency of one image (`latency`) and images per second at batch 64 of the image embedding and VQA."
    out = latency(pipe, runs, threads=torch.get_num_threads())
    img, ids, mask = inputs(pipe, 64)
    emb = ImageEncoder(pipe.pre.clip).eval()
    vqa = PairedVQA(pipe.vqa).eval()
    out['image_embed_per_s'] = round(64_000 / median_ms(lambda: emb(img), runs), 1)
    out['vqa_per_s'] = round(64_000 / median_ms(lambda: vqa(img, ids, mask), runs), 1)
    return out


def ort_sessions(onnx_dir: Path) -> dict:
    "ONNX Runtime sessions of the exported image encoder and VQA graph (CPU provider, torch's thread count)."
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    return {k: ort.InferenceSession(str(onnx_dir / f'{k}.onnx'), opts, providers=['CPUExecutionProvider'])
            for k in ('image_encoder', 'vqa')}


def ort_speed(pipe, sess: dict, runs: int) -> dict:
    "The same measures for the exported graphs in ONNX Runtime."
    out = {}
    for batch, key in ((1, 'ms'), (64, 'per_s')):
        img, ids, mask = (x.numpy() for x in inputs(pipe, batch))
        feeds = {'image_encoder': {'images': img}, 'vqa': {'images': img, 'input_ids': ids, 'attention_mask': mask}}
        for k, name in (('image_encoder', 'image_embed'), ('vqa', 'vqa')):
            ms = median_ms(lambda: sess[k].run(None, feeds[k]), runs)
            out[f'{name}_{key}'] = ms if batch == 1 else round(64_000 / ms, 1)
    return out


def row(name: str, r: dict) -> str:
    def f(k, spec): return '-' if r.get(k) is None else format(r[k], spec)
    return (f"| {name} | {f('image_embed_ms', '.2f')} | {f('vqa_ms', '.2f')} | {f('caption_ms', '.1f')} | "
            f"{f('image_embed_per_s', ',.0f')} | {f('vqa_per_s', ',.0f')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--run', default='runs/demo')
    ap.add_argument('--onnx', default=None, help='exported graphs (mmkt export); exported to a temporary dir if absent')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--runs', type=int, default=50, help='calls timed per configuration, over all rounds')
    ap.add_argument('--rounds', type=int, default=5, help='configurations measured in turn, this many times over')
    ap.add_argument('--cold', type=int, default=3, help='fresh mmkt predict processes timed')
    ap.add_argument('--record', action='store_true', help='append the results to benchmarks/RESULTS.md')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    pipe = load_run(run)
    image = next((Path(pipe.cfg.data) / pipe.cfg.test_split).iterdir())
    cold = cold_start(run, image, args.cold)
    measures = {}
    configs = configurations() if quantize_requirements() is None else [((), None)]
    for parts, mode in configs:
        q = pipe if mode is None else quantize_pipeline(pipe, parts, mode)
        measures[f'PyTorch {config_name(parts, mode)}'] = lambda q=q: torch_speed(q, args.runs // args.rounds)
    tmp = tempfile.TemporaryDirectory()
    if export_requirements() is None:
        onnx_dir = Path(args.onnx) if args.onnx else Path(tmp.name)
        if not args.onnx: export_run(run, onnx_dir, pipe)
        sess = ort_sessions(onnx_dir)
        measures['ONNX Runtime (float)'] = lambda: ort_speed(pipe, sess, args.runs // args.rounds)
    results = in_turn(measures, args.rounds)
    tmp.cleanup()
    lines = ["| configuration | image embedding ms | VQA ms | caption ms | image embeddings / s | VQA / s |",
             "|---|---|---|---|---|---|"] + [row(k, r) for k, r in results.items()]
    head = (f"{datetime.date.today()}, run `{run}`, {args.threads} thread(s), {platform.machine()} "
            f"(torch {torch.__version__}, {args.runs} calls in {args.rounds} rounds); cold start of `mmkt predict` "
            f"(one question and one caption, fresh process): {cold['predict_s']:.2f} s, of which importing the CLI "
            f"{cold['import_s']:.2f} s.")
    print(head)
    print('\n'.join(lines))
    if args.record:
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f:
            f.write('\n' + head + '\n\n' + '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
