r"""Build GPT-2 small sharded over every rank (FSDP2) from its recipe, train it a few steps, save it.

    torchrun --nproc_per_node 2 examples/train_gpt2_sharded.py                      # GPT-2 small, 124 M
    torchrun --nproc_per_node 2 examples/train_gpt2_sharded.py \
        vars.n_layer=2 vars.n_embd=128 vars.n_head=2 --steps 20 --save ckpt_tiny          # tiny, ~20 s on CPUs
    torchrun --nproc_per_node 2 examples/train_gpt2_sharded.py vars.n_layer=2 vars.n_embd=128 vars.n_head=2 --tp 2
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 examples/train_gpt2_sharded.py --save ckpt

The recipe's ``parallel:`` section, set here (``PARALLEL``), computes the forward in bfloat16 with
gradients reduced in float32 (FSDP2's mixed precision) and checkpoints each block's activations
(recomputed in backward); ``--tp N`` splits every block over N ranks too (tensor parallel over a
("dp", "tp") mesh, the fused q/k/v projection by heads).

On GPUs each rank takes its own device and NCCL; on CPUs, gloo. Overrides are OmegaConf dot-list
entries on the packaged ``composer/conf/model/gpt2_small.yaml`` (its ``vars`` shrink the model; ``n_embd``
must be a multiple of ``n_head``, so a smaller ``n_embd`` takes a smaller ``n_head``). Each rank builds only
its shards: one FSDP unit per transformer block, the root holding the tied embedding and head.
The data is a synthetic next-token task (each sequence counts up from a random start), so the loss
falls within a few steps; each data-parallel rank draws its own batches, as data parallelism does (the
tp ranks of one replica share theirs).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.device_mesh import init_device_mesh
from torch.nn import functional as F

import composer
from composer import build_from_config, load_checkpoint, save_checkpoint, summary

# The recipe inside the installed package (a wheel carries composer/conf/), not a checkout's path.
RECIPE = Path(composer.__file__).resolve().parent / "conf" / "model" / "gpt2_small.yaml"
PARALLEL = {  # the recipe's parallel: section (README, "Past one machine")
    "param_dtype": "bfloat16",
    "reduce_dtype": "float32",
    "checkpoint": {"match": "transformer.h.*"},
}
TENSOR_PARALLEL = {  # each block split over the mesh's "tp" dim: q/k/v by heads, the MLP by columns
    "*.attn.c_attn": {"style": "colwise", "chunks": 3},
    "*.attn.c_proj": "rowwise",
    "*.mlp.c_fc": "colwise",
    "*.mlp.c_proj": "rowwise",
}


def batch(vocab: int, length: int, size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Sequences that count up from a random start, modulo min(vocab, 256): each next token
    follows from the last one, which a language model learns in a few dozen steps."""
    span = min(vocab, 256)
    start = torch.randint(0, span, (size, 1), generator=gen)
    return ((start + torch.arange(length + 1)) % span).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="OmegaConf dot-list on the recipe, e.g. vars.n_layer=2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank and step")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save", help="a checkpoint directory to write at the end (and read back)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per block (divides the world size)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.tp > 1:
        mesh = init_device_mesh("cuda" if cuda else "cpu", (world // args.tp, args.tp), mesh_dim_names=("dp", "tp"))
    else:
        mesh = init_device_mesh("cuda" if cuda else "cpu", (world,))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    cfg = OmegaConf.merge(OmegaConf.load(RECIPE), OmegaConf.from_dotlist(args.overrides))
    recipe = OmegaConf.to_container(cfg, resolve=True)
    recipe["init"]["seed"] = 0  # GPT-2's own init (the recipe's), seeded: the same weights on any world size
    recipe["parallel"] = {**PARALLEL, **({"tp": TENSOR_PARALLEL} if args.tp > 1 else {})}
    vocab = recipe["vars"]["vocab_size"]

    started = time.perf_counter()
    model = build_from_config(recipe, mesh=mesh)
    built = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())
    if rank == 0:
        print(f"built {params:,} parameters on {world} ranks in {built:.2f} s; rank 0 holds {local:,}", flush=True)
    layout = summary(model, depth=0).split("layout:")[1].split("initialization:")[0]  # a forward: every rank
    if rank == 0:
        print(f"layout:{layout.rstrip()}", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data_rank = mesh["dp"].get_local_rank() if args.tp > 1 else rank  # the tp ranks of a block share its batch
    gen = torch.Generator().manual_seed(1000 + data_rank)
    for step in range(1, args.steps + 1):
        tokens = batch(vocab, args.length, args.batch, gen, device)
        started = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())  # bf16 logits, fp32 loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"step {step}: loss {mean.item() / world:.4f} ({time.perf_counter() - started:.2f} s)", flush=True)

    if args.save:
        save_checkpoint(model, args.save)  # every rank writes its shards; one directory
        again = load_checkpoint(args.save, mesh=mesh)
        probe = batch(vocab, args.length, 2, torch.Generator().manual_seed(0), device)[:, :-1]
        model.eval(), again.eval()
        with torch.no_grad():
            same = torch.equal(model(probe), again(probe))
        if rank == 0:
            print(f"saved to {args.save} and read back: outputs {'equal' if same else 'DIFFER'}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
