"""`mcla_epoch`: seconds for ONE training epoch of our MCLA trainer (`mcla_jax.train`) vs a
PyTorch implementation of SIC's training step run the way SIC's official loop runs it.

Data: N x 512 unit-norm features, 15 Gaussian blobs (`benchmarks.knn.clip_like_features`,
ImageNet-Dogs with CLIP ViT-B/32 is N = 19,500, K = 15), synthetic text counterparts (one text
direction per blob + noise, unit rows) and 20-NN indices (`vl_jax.cluster.knn`); all of these are
precomputed and not timed. Both sides get the same host float32 arrays.

Ours: `mcla_jax.train.Trainer.epoch`, the epoch `train` runs -- host shuffle + random kNN
neighbour per anchor (indices only), their `device_put`, the jitted `lax.scan` of Adam steps
gathering batches on the device (`make_epoch`), then the jitted full-data pass
(`make_epoch_targets`: prototypes, semantic centres, assignments) and the host fetch of the epoch
metrics and assignments. Default config
(two heads; all loss terms on except `instance`, which needs the adapter), post-warm-up (the
prototype/semantic terms active). Compiled once before timing; every timed call is a later epoch.
A second figure (`sic_seconds_per_epoch`) compares like with like: SIC itself run by our
trainer (`config.method = "sic"`, `mcla_jax.methods.SIC`: one linear head, SIC's three terms and
semantic centres) against the same PyTorch loop.

Baseline (SIC, AAAI'23, as summarised in docs/mcla.md): one `nn.Linear(512, K)` head,
`torch.optim.Adam`, a `DataLoader(TensorDataset(features, knn_idx, texts), shuffle=True,
drop_last=True)`; per epoch one no-grad pass over all N (top floor(0.9 floor(N/K)) rows per
cluster -> image centre v_k -> normalised mean of the 30 nouns nearest to v_k = semantic centre
h_k; nouns: 2,000 synthetic unit text embeddings), then per batch: a random kNN
neighbour per anchor, forward of anchors and neighbours, L = -mean log(p_i . p_j) - 5 H(mean p)
+ 0.1 CE(logits_i, argmax_k <u_i, h_k>), `loss.backward()`, `opt.step()`. fp32, all cores.
Same batch size and samples per epoch (N // B * B) on both sides. `params.torch_no_loader_seconds`
times the same torch step with shuffled index slices instead of the DataLoader (a faster torch
than SIC's own loop), so the reader can see how much of the ratio is the DataLoader.

Full runs add `n{N}_seconds` figures for N in {5k, 20k, 80k} (one timed epoch per side, after
one untimed) showing how the epoch time grows with N; their kNN indices are random same-blob
rows (the epoch's cost does not depend on which rows are neighbours; exact kNN at 80k takes
~40 s and is not what is measured).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import ForeignLoad, figure, log, register, time_interleaved
from benchmarks.knn import clip_like_features

NAME = "mcla_epoch"
DIM, CLUSTERS, KNN = 512, 15, 20
BATCH = 512  # configs/mcla/common.py train_config().batch_size
SIC_WEIGHTS = dict(neighbour=1.0, entropy=5.0, semantic=0.1)  # SIC's loss, docs/mcla.md
SIC_LR, SIC_WD, SIC_ENTROPY, SIC_SEMANTIC = 1e-4, 1e-4, 5.0, 0.1


SIC_NOUNS, SIC_NEAR = 2000, 30


def _nouns() -> np.ndarray:
    """[SIC_NOUNS, D] unit noun embeddings: around the blobs' text directions, plus noise."""
    rng = np.random.default_rng(2)
    tc = np.random.default_rng(1).standard_normal((CLUSTERS, DIM))
    x = tc[rng.integers(0, CLUSTERS, SIC_NOUNS)] + 1.5 * rng.standard_normal((SIC_NOUNS, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(n: int, *, exact_knn: bool):
    """(u [n, D], t [n, D], knn_idx [n, KNN] int64), host arrays; not timed."""
    u, y = clip_like_features(n)
    rng = np.random.default_rng(1)
    tc = rng.standard_normal((CLUSTERS, DIM))
    t = tc[y] + 0.8 * rng.standard_normal((n, DIM))
    t = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    if exact_knn:
        from vl_jax.cluster import knn

        idx = np.asarray(knn(u, KNN)[0], np.int64)
    else:  # random rows of the same blob
        order = np.argsort(y, kind="stable")
        start = np.searchsorted(y[order], np.arange(CLUSTERS))
        size = np.bincount(y, minlength=CLUSTERS)
        pick = rng.integers(0, size[y][:, None], size=(n, KNN))
        idx = order[start[y][:, None] + pick].astype(np.int64)
    return u, t, idx


def _ours(u, t, knn_idx, method: str = "mcla"):
    """`() -> loss` running the next epoch of `mcla_jax.train.Trainer` (the object `train`
    drives), and its config; the first epoch (compiling both programs) runs here."""
    from configs.mcla.common import train_config
    from mcla_jax import train as mcla

    cfg = train_config()
    cfg.num_clusters = CLUSTERS
    cfg.batch_size = BATCH
    cfg.model.adapter = False  # two heads, as in the figures' description (module docstring)
    cfg.semantic_warmup_epochs = 0  # every timed epoch has all terms on (the torch side does)
    if method == "sic":  # SIC's settings, as the torch loop below
        cfg.method, cfg.lr, cfg.weight_decay, cfg.b2, cfg.warmup_epochs = (
            "sic",
            SIC_LR,
            SIC_WD,
            0.999,
            0,
        )
        cfg.weights = dict(SIC_WEIGHTS)
        cfg.semantic_nouns = SIC_NEAR
        run = mcla.Trainer(u, t, knn_idx, cfg, aux={"nouns": _nouns()})  # SIC: raw features
    else:
        run = mcla.Trainer(mcla.prepare(u), mcla.prepare(t), knn_idx, cfg)  # prepare: not timed

    def epoch():
        return run.epoch()["loss"]

    epoch()  # compile; past it the warm-up-gated terms are on, as in every timed epoch
    return epoch, cfg


def _torch(u, t, knn_idx, *, loader: bool = True):
    """`() -> loss`: one epoch of SIC's training loop in PyTorch (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    u_all, t_all = torch.from_numpy(u), torch.from_numpy(t)
    nouns = torch.from_numpy(_nouns())
    nb_all = torch.from_numpy(knn_idx)
    n = len(u)
    m = max(1, int(0.9 * (n // CLUSTERS)))
    head = torch.nn.Linear(DIM, CLUSTERS)
    opt = torch.optim.Adam(head.parameters(), lr=SIC_LR, weight_decay=SIC_WD)
    dl = DataLoader(TensorDataset(u_all, nb_all, t_all), batch_size=BATCH, shuffle=True,
                    drop_last=True, num_workers=0)  # fmt: skip
    steps = n // BATCH

    def batches():
        if loader:
            yield from dl
            return
        perm = torch.randperm(n)[: steps * BATCH].view(steps, BATCH)
        for a in perm:
            yield u_all[a], nb_all[a], t_all[a]

    def epoch():
        with torch.no_grad():  # SIC: logits on all N -> confident rows -> semantic centres
            top = head(u_all).topk(m, dim=0).indices  # [m, K]
            v = F.normalize(u_all[top].mean(0), dim=-1)  # [K, D] image centres
            near = (v @ nouns.T).topk(SIC_NEAR, dim=1).indices  # [K, 30]
            centres = F.normalize(nouns[near].mean(1), dim=-1)  # [K, D]
        total = 0.0
        for ub, nb, _tb in batches():
            j = nb[torch.arange(len(nb)), torch.randint(0, nb.shape[1], (len(nb),))]
            logits = head(ub)
            p = logits.softmax(-1)
            p_nb = head(u_all[j]).softmax(-1)
            cons = -torch.log((p * p_nb).sum(-1).clamp_min(1e-8)).mean()
            pbar = p.mean(0)
            ent = -(pbar * torch.log(pbar.clamp_min(1e-8))).sum()
            with torch.no_grad():
                y = (ub @ centres.T).argmax(-1)
            loss = cons - SIC_ENTROPY * ent + SIC_SEMANTIC * F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        return total / steps

    loss = epoch()
    if not np.isfinite(loss):
        raise FloatingPointError(f"{NAME}: non-finite torch loss {loss}")
    return epoch


# ------------------------------------------------------------------ prompt learning (MCLA)
PROMPT_PER_STEP, PROMPT_CONTEXT = 64, 16
PROMPT_NOUNS = {True: 256, False: 1000}  # semantic-space nouns (quick, full)
# The text tower: quick = 2 layers of width 128; full = CLIP ViT-B/32's (12 x 512, 8 heads).
PROMPT_TOWER = {True: dict(text_width=128, text_layers=2, text_heads=4),
                False: dict(text_width=512, text_layers=12, text_heads=8)}  # fmt: skip


def _prompt_setup(quick: bool, folder: str):
    """A random CLIP (``vl_jax.models.tiny`` family, 512-d embeddings, the text tower of
    ``PROMPT_TOWER``) written as a HF directory, and the prompt tokens of the first
    ``PROMPT_NOUNS[quick]`` WordNet lemmas (``mcla_jax.prompts.prompt_tokens``)."""
    from mcla_jax import prompts, wordnet
    from vl_jax.models import tiny
    from vl_jax.models.loaded import ClipCheckpoint

    tiny.write_clip(folder, embed_dim=DIM, context_length=PROMPT_CONTEXT, **PROMPT_TOWER[quick])
    ck = ClipCheckpoint(folder)
    words = [str(w) for w in wordnet.load().lemmas[: PROMPT_NOUNS[quick]]]
    tokens = prompts.prompt_tokens(ck.tokenizer, words, PROMPT_CONTEXT)
    return ck, tokens


def _ours_prompts(u, knn_idx, ck, tokens, prompt: bool):
    """`() -> loss` running the next epoch of MCLA (adapter on) with the prompt text path
    (``prompt``) or heads only (no adapter, no prompts, fixed counterparts)."""
    from configs.mcla.common import train_config
    from mcla_jax import prompts
    from mcla_jax import train as mcla

    cfg = train_config()
    cfg.num_clusters, cfg.batch_size = CLUSTERS, BATCH
    cfg.prompt.nouns_per_step = PROMPT_PER_STEP
    cfg.model.adapter = prompt
    cfg.semantic_warmup_epochs = 0  # every timed epoch has all terms on (the torch side does)
    text = prompts.PromptText(ck.model.text, tokens, ck.mesh, cfg.tau.text)
    import jax.numpy as jnp

    bank = np.asarray(jax_jit_bank(text)(text.arrays(), jnp.asarray(text.init_context())))
    t = mcla.prepare(mcla.build_text_counterparts(u, bank, cfg.tau.text))
    kw = dict(text=text, raw=u) if prompt else {}
    run = mcla.Trainer(mcla.prepare(u), t, knn_idx, cfg, **kw)

    def epoch():
        return run.epoch()["loss"]

    epoch()  # compile; the warm-up-gated terms are on in every timed epoch
    return epoch


def jax_jit_bank(text):
    import jax

    return jax.jit(text.bank)  # the initial noun embeddings (untimed)


def _torch_prompts(u, knn_idx, ck, tokens):
    """`() -> loss`: one epoch of the same MCLA step in PyTorch: adapter, two heads, the
    prompt context through transformers' ``CLIPTextModelWithProjection`` (frozen; a forward
    hook puts the context into the token embeddings), the same seven loss terms and targets."""
    import torch
    import torch.nn.functional as F
    import transformers

    from configs.mcla.common import train_config
    from mcla_jax import prompts

    torch.manual_seed(0)
    cfg = train_config()
    w8, tau = dict(cfg.weights), dict(cfg.tau)
    tower = transformers.CLIPTextModelWithProjection.from_pretrained(ck.path).eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    ids, mask = torch.from_numpy(tokens.ids).long(), torch.from_numpy(tokens.mask).long()
    emb = tower.text_model.embeddings.token_embedding
    ctx = torch.nn.Parameter(emb.weight[torch.from_numpy(tokens.init_ids).long()].clone())
    n_ctx = tokens.n_ctx
    emb.register_forward_hook(
        lambda mod, inp, out: torch.cat(
            [out[:, :1], ctx.expand(len(out), -1, -1), out[:, 1 + n_ctx :]], 1
        )
    )

    def embed(rows, length=None):
        # Cut at the rows' longest prompt (the tokens past it are padding, which a causal tower's
        # end-of-text feature never sees): the same truncation our side gets.
        length = length or int(mask[rows].sum(1).max())
        return F.normalize(
            tower(input_ids=ids[rows, :length], attention_mask=mask[rows, :length]).text_embeds,
            dim=-1,
        )

    # The same per-step noun draw and length groups as ours (prompts.subset_groups), and the
    # bank in chunks of similar length, so both sides embed the same tokens.
    plan = prompts.PromptText(ck.model.text, tokens, ck.mesh).with_subset(PROMPT_PER_STEP)
    by_length = torch.from_numpy(np.argsort(tokens.mask.sum(1), kind="stable"))
    groups = [(g.width, plan.prefix_len + g.length) for g in plan.subset]
    rng = np.random.default_rng(0)

    adapter = torch.nn.Linear(DIM, DIM)
    torch.nn.init.zeros_(adapter.weight), torch.nn.init.zeros_(adapter.bias)
    img_head, txt_head = torch.nn.Linear(DIM, CLUSTERS), torch.nn.Linear(DIM, CLUSTERS)
    params = [ctx, *adapter.parameters(), *img_head.parameters(), *txt_head.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.b1, cfg.b2))
    u_raw = torch.from_numpy(u)
    uc = u_raw - u_raw.mean(0)
    u_all = F.normalize(uc, dim=-1)
    nb_all = torch.from_numpy(knn_idx)
    n, m_nouns = len(u), len(ids)
    m = max(1, int(0.9 * (n // CLUSTERS)))
    steps = n // BATCH

    def counterpart(r, bank):
        s = F.normalize(r, dim=-1) @ bank.T / tau["text"]
        return F.normalize(s.softmax(-1) @ bank, dim=-1)

    def z_of(x):
        return F.normalize(0.2 * adapter(x) + 0.8 * x, dim=-1)

    def infonce(a, b, t):
        s = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / t
        lab = torch.arange(len(s))
        return 0.5 * (F.cross_entropy(s, lab) + F.cross_entropy(s.T, lab))

    def agree(p, q):
        return -torch.log((p * q).sum(-1).clamp_min(1e-8)).mean()

    def neg_entropy(p):
        pb = p.mean(0)
        return (pb * torch.log(pb.clamp_min(1e-8))).sum()

    def columns(pa, pb, t):
        k = pa.shape[1]
        v = F.normalize(torch.cat([pa.T, pb.T]), dim=-1)
        s = (v @ v.T / t).masked_fill(torch.eye(2 * k, dtype=torch.bool), float("-inf"))
        pos = torch.cat([torch.arange(k, 2 * k), torch.arange(k)])
        return F.cross_entropy(s, pos)

    def epoch():
        with torch.no_grad():  # the epoch targets from the current context
            bank = torch.empty(m_nouns, DIM)
            for i in range(0, m_nouns, 256):
                rows = by_length[i : i + 256]
                bank[rows] = embed(rows)
            raw_t = counterpart(u_raw, bank)
            tmean = raw_t.mean(0)
            t_all = F.normalize(raw_t - tmean, dim=-1)
            z = z_of(u_all)
            li, lt = img_head(z), txt_head(t_all)
            proto_img = F.normalize(li.softmax(-1).T @ z, dim=-1)
            proto_txt = F.normalize(lt.softmax(-1).T @ t_all, dim=-1)
            centres = F.normalize(t_all[li.topk(m, dim=0).indices].mean(0), dim=-1)
        perm = torch.randperm(n)[: steps * BATCH].view(steps, BATCH)
        walk = torch.from_numpy(plan.noun_rows(rng, steps)).long()  # [steps, s]
        total = 0.0
        for s, a in enumerate(perm):
            j = nb_all[a, torch.randint(0, nb_all.shape[1], (len(a),))]
            w, lo, fresh = walk[s], 0, []
            for width, length in groups:
                fresh.append(embed(w[lo : lo + width], length))
                lo += width
            bank_s = bank.index_copy(0, w, torch.cat(fresh))
            tb = F.normalize(counterpart(u_raw[a], bank_s) - tmean, dim=-1)
            tn = F.normalize(counterpart(u_raw[j], bank_s) - tmean, dim=-1)
            z = z_of(u_all[a])
            li, lt = img_head(z), txt_head(tb)
            pi, pt = li.softmax(-1), lt.softmax(-1)
            pin, ptn = img_head(z_of(u_all[j])).softmax(-1), txt_head(tn).softmax(-1)
            y = (tb @ centres.T).argmax(-1)
            terms = dict(
                instance=infonce(z, tb, tau["instance"]),
                consistency=agree(pi, pt),
                prototype=0.5
                * (
                    infonce(F.normalize(pi.T @ z, dim=-1), proto_txt, tau["prototype"])
                    + infonce(F.normalize(pt.T @ tb, dim=-1), proto_img, tau["prototype"])
                ),
                semantic=F.cross_entropy(li, y),
                cluster=columns(pi, pt, tau["cluster"]),
                neighbour=agree(pi, pin) + agree(pt, ptn),
                entropy=neg_entropy(pi) + neg_entropy(pt),
            )
            loss = sum(float(w8[k]) * v for k, v in terms.items())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        return total / steps

    loss = epoch()
    if not np.isfinite(loss):
        raise FloatingPointError(f"{NAME}: non-finite torch loss {loss}")
    return epoch


def _prompt_figures(quick: bool, n: int, iters: int, params: dict) -> list[dict]:
    import tempfile

    u, _, idx = _data(n, exact_knn=False)
    with tempfile.TemporaryDirectory() as folder:
        ck, tokens = _prompt_setup(quick, os.path.join(folder, "clip"))
        fns = {
            "ours_prompts": _ours_prompts(u, idx, ck, tokens, True),
            "ours_heads": _ours_prompts(u, idx, ck, tokens, False),
            "torch_prompts": _torch_prompts(u, idx, ck, tokens),
        }
        with ForeignLoad() as load:
            tm = time_interleaved(fns, warmup=1, iters=iters)
    log.info("%s prompts n=%d: %s (foreign load %s cores)", NAME, n, tm, load.cores)
    p = {**params, "n": n, "epochs_timed": iters, "nouns": PROMPT_NOUNS[quick],
         "nouns_per_step": PROMPT_PER_STEP, "text_tower": PROMPT_TOWER[quick],
         "prompt_tokens": int(tokens.ids.shape[1]), "ours_heads_only_seconds": tm["ours_heads"],
         "torch_loss_terms": "MCLA's seven terms, configs/mcla/common.py weights",
         "ours_model": "MCLAModel + adapter + prompt context through our CLIP text tower",
         "torch_model": "the same step: adapter, two heads, context via a token-embedding hook "
                        "in transformers CLIPTextModelWithProjection, torch.optim.Adam",
         "foreign_cpu_cores": load.cores}  # fmt: skip
    base = "PyTorch MCLA step with prompt learning (transformers CLIP text tower), fp32"
    return [
        figure(NAME, "prompts_seconds_per_epoch", tm["ours_prompts"], tm["torch_prompts"], base,
               higher_is_better=False, params=p),
        figure(NAME, "heads_only_seconds_per_epoch", tm["ours_heads"], tm["torch_prompts"], base,
               higher_is_better=False, params=p),
    ]  # fmt: skip


def _one(n: int, *, iters: int, exact_knn: bool, extras: bool) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    u, t, idx = _data(n, exact_knn=exact_knn)
    ours, cfg = _ours(u, t, idx)
    fns = {"ours": ours, "torch": _torch(u, t, idx)}
    if extras:
        fns["ours_sic"] = _ours(u, t, idx, "sic")[0]
        fns["torch_no_loader"] = _torch(u, t, idx, loader=False)
    with ForeignLoad() as load:
        tm = time_interleaved(fns, warmup=1, iters=iters)
    log.info("%s n=%d: %s (foreign load %s cores)", NAME, n, tm, load.cores)
    terms = [k for k, v in cfg.weights.items() if v and k != "instance"]  # instance: no adapter
    out = {
        "t": tm,
        "steps_per_epoch": n // BATCH,
        "samples_per_epoch": n // BATCH * BATCH,
        "ours_loss_terms": {k: float(cfg.weights[k]) for k in terms},
        "foreign_cpu_cores": load.cores,
    }
    if extras:
        out["ours_sic_seconds"] = tm["ours_sic"]
        out["torch_no_loader_seconds"] = tm["torch_no_loader"]
    return out


@register(NAME)
def mcla_epoch_bench(
    quick: bool, *, n: int | None = None, growth: bool | None = None
) -> list[dict]:
    """N = 19,500 (quick 5,000), B = 512, K = 15; growth figures on full runs."""
    import jax
    import torch

    n = n or (5_000 if quick else 19_500)
    growth = (not quick) if growth is None else growth
    iters = 3 if quick else 5
    params = {
        "dim": DIM,
        "k": CLUSTERS,
        "batch": BATCH,
        "knn": KNN,
        "data": "15 Gaussian blobs, unit rows (benchmarks.knn) + synthetic text counterparts",
        "ours_model": "MCLAModel: image + text Linear(512, K) heads, no adapter; optax.adamw",
        "torch_model": "SIC: one Linear(512, K) head; torch.optim.Adam(lr 1e-4, wd 1e-4)",
        "torch_loss_terms": {"neighbour": 1.0, "entropy": SIC_ENTROPY, "semantic": SIC_SEMANTIC},
        "timing": "median s per epoch (batches + steps + full-data targets pass), interleaved, "
        "compiled before timing",
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
    }
    base = "PyTorch SIC loop (DataLoader, Linear head, Adam), fp32, all threads"
    r = _one(n, iters=iters, exact_knn=True, extras=True)
    t = r.pop("t")
    figs = [
        figure(NAME, "seconds_per_epoch", t["ours"], t["torch"], base, higher_is_better=False,
               params={**params, "n": n, "epochs_timed": iters, **r}),
        figure(NAME, "sic_seconds_per_epoch", t["ours_sic"], t["torch"], base,
               higher_is_better=False,
               params={**params, "n": n, "epochs_timed": iters,
                       "ours_model": "mcla_jax.methods.SIC: one Linear(512, K) head, SIC's terms, "
                                     "optax.adamw(1e-4, wd 1e-4)", **r}),
    ]  # fmt: skip
    figs += _prompt_figures(quick, n, iters, params)
    if growth:
        for gn in (5_000, 20_000, 80_000):
            r = _one(gn, iters=1, exact_knn=False, extras=False)
            t = r.pop("t")
            figs.append(
                figure(NAME, f"n{gn}_seconds", t["ours"], t["torch"], base,
                       higher_is_better=False,
                       params={**params, "n": gn, "epochs_timed": 1,
                               "knn_indices": "random same-blob rows", **r})
            )  # fmt: skip
    return figs
