"""Grounding probes (chapter 10b) on a trained run: what the image tower holds about each object, where the VQA model's
question attention falls, whether its answers follow a recoloured object, and how much gradient reaches each part.

    python benchmarks/grounding.py runs/demo                  # a finished run on ShapeScenes
    python benchmarks/grounding.py runs/demo --record         # append the results to benchmarks/RESULTS.md

Towers probed: random weights of the run's architecture (what it gives for free), after the contrastive stage, and the
VQA model's tower. Probes: fitted on the objects of --n-train training images, scored on --n-test validation images.
"""
import argparse
import datetime
import json
import platform
from pathlib import Path

from safetensors.torch import load_model

from mmkt_lib.core import set_seed
from mmkt_lib.data import image_transform
from mmkt_lib.pipeline import STAGE_LOSSES, load_run, pretrain_model
from mmkt_lib.probes import attention_on_named, gradient_norms, probe_tower, recolour_test, scene_objects


def towers(pipe):
    "(name, image tower) pairs: random weights, after the contrastive stage, inside the VQA model."
    set_seed(pipe.cfg.seed + 1)
    rand = pretrain_model(pipe.cfg, pipe.tok, len(pipe.vocab)).clip.visual
    out = [('random', rand)]
    f = pipe.out / 'contrastive.safetensors'
    if f.is_file():
        clip = pretrain_model(pipe.cfg, pipe.tok, len(pipe.vocab)).clip
        load_model(clip, str(f))
        out.append(('contrastive', clip.visual))
    return out + [('vqa', pipe.vqa.clip.visual)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('run')
    ap.add_argument('--n-train', type=int, default=1500)
    ap.add_argument('--n-test', type=int, default=400)
    ap.add_argument('--record', action='store_true')
    args = ap.parse_args()
    pipe = load_run(args.run)
    cfg = pipe.cfg
    tf = image_transform(cfg.image_size)
    res = {'probes': {name: probe_tower(v, pipe.data, cfg.train_split, cfg.val_split, args.n_train, args.n_test, tf)
                      for name, v in towers(pipe)}}
    ds, col = pipe.vqa_data(cfg.val_split, False)
    res['attention'] = attention_on_named(pipe.vqa, ds, col, scene_objects(pipe.data, cfg.val_split))
    res['recolour'] = recolour_test(pipe.vqa, pipe.data, cfg.val_split, col, pipe.vocab, transform=tf)
    tds, tcol = pipe.stage_data('vqa')
    batch = tcol([tds[i] for i in range(cfg.batch_size)])
    pipe.vqa.train()
    grads = gradient_norms(pipe.vqa, STAGE_LOSSES['vqa'](pipe.vqa, batch)['loss'])
    res['gradient'] = {k: float(f'{v:.3g}') for k, v in grads.items()}
    print(json.dumps(res, indent=1))
    if args.record:
        row = (f"| {datetime.date.today()} | {Path(args.run).name} | probes (colour/shape/size/x/y, %): "
               + '; '.join(f"{n} {'/'.join(str(v) for v in p.values())}" for n, p in res['probes'].items())
               + f"; attention on the named object {res['attention']['attention']}% (uniform "
               f"{res['attention']['uniform']}%); colour answers on original / recoloured scenes "
               f"{res['recolour']['original']} / {res['recolour']['recoloured']}% | {platform.machine()} |\n")
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f:
            f.write(row)


if __name__ == '__main__':
    main()
