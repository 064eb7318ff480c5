"""Incremental BLT generation: exact (the same function as a full forward over the whole prefix with the same
patching rule), and O(1) per byte.

Per byte t of every row, one step does:

1. the entropy model advances one byte on its sliding-window KV cache and gives e[t];
2. the patch rule decides from e[t] (or the byte) whether byte t+1 opens a patch (``patching.py``'s rules,
   evaluated causally: they look at bytes and entropies up to t only);
3. the local encoder advances one byte (hash n-grams need only the last 8 bytes; self-attention uses its
   sliding-window KV cache) and appends byte t's state to the open patch;
4. when byte t+1 opens a patch, the open patch is finished: its pooled queries cross-attend to its bytes and
   the global transformer runs once on it, on its own KV cache;
5. the local decoder advances one byte on its KV cache. Byte t reads the global state of the patch before the one
   holding byte t+1 (``blt.py``'s one-patch shift), which is always the latest finished patch: the one byte t
   just closed, or the one before the patch still open.

The prompt bytes that every row still has to feed go through the same steps C bytes at a time: the local models
run over the chunk at once, and each patch finished inside it gets its encoder state and global step once.

Rows of a batch advance in lockstep from their first byte (a row still in its prompt is fed its next prompt
byte, a row past it its sampled byte), so every row has the same position, and rows of different prompt lengths
need no padding. A row that has all its bytes leaves the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from .blt import ByteLatentTransformer, LocalEncoder
from .entropy_model import EntropyModel, entropy_from_logits
from .hashing import hash_ngram_ids
from .layers import TransformerLayer, apply_rope, rope_at
from .patching import PatchingParams, _boundary_bytes
from .tokens import BYTE_OFFSET

OnBytes = Callable[[int, bytes], None]  # (prompt index, bytes just generated for it)


# ----- the patch rule, one byte at a time -------------------------------------------------------------------------
@dataclass
class RuleInputs:
    """What a rule sees at position t (>= 1) of every row: entropies and bytes at t and t-1."""

    t: int
    entropy: torch.Tensor | None  # [B] float32
    prev_entropy: torch.Tensor | None
    byte: torch.Tensor  # [B] byte values
    prev_byte: torch.Tensor


def _entropy(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    return x.entropy > p.threshold


def _monotonic(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    if x.t == 1:
        return torch.ones_like(x.byte, dtype=torch.bool)
    return (x.entropy - x.prev_entropy) > p.threshold


def _threshold_add(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    if x.t <= 2:
        return torch.full_like(x.byte, x.t == 1, dtype=torch.bool)
    return ((x.entropy - x.prev_entropy) > p.threshold_add) & (x.entropy > p.threshold)


def _threshold_or_rise(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    return (x.entropy > p.threshold) | ((x.entropy - x.prev_entropy) > p.threshold_add)


def _space(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    return _boundary_bytes(x.byte) & ~_boundary_bytes(x.prev_byte)


def _never(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    return torch.zeros_like(x.byte, dtype=torch.bool)


def _always(p: PatchingParams, x: RuleInputs) -> torch.Tensor:
    return torch.ones_like(x.byte, dtype=torch.bool)


# criterion at t (>= 1) => byte t+1 starts a patch. topk and spacebyte look ahead (a document-wide budget, the
# next byte), so they cannot decide as bytes arrive.
INCREMENTAL_RULES: dict[str, Callable[[PatchingParams, RuleInputs], torch.Tensor]] = {
    "entropy": _entropy,
    "monotonic": _monotonic,
    "threshold_add": _threshold_add,
    "threshold_or_rise": _threshold_or_rise,
    "space": _space,
    "static": _never,  # static starts come from the position alone (below)
    "byte": _always,
}


def check_incremental(params: PatchingParams) -> None:
    if params.mode not in INCREMENTAL_RULES:
        raise ValueError(f"patching mode {params.mode!r} looks ahead and cannot patch while generating; "
                         f"incremental modes: {sorted(INCREMENTAL_RULES)}")


# ----- caches -------------------------------------------------------------------------------------------------
@dataclass
class WindowCache:
    """A local stack's sliding-window KV cache: per layer post-RoPE keys/values of the last W-1 positions
    [B, Hkv, W-1, D]. Rows move in lockstep, so which slots hold real positions is one count for the batch."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    window: int


def _empty_window(layers, batch: int, window: int, device, dtype) -> WindowCache:
    attn = layers[0].self_attn
    shape = (batch, attn.num_kv_heads, window - 1, attn.head_dim)
    return WindowCache([torch.zeros(shape, device=device, dtype=dtype) for _ in layers],
                       [torch.zeros(shape, device=device, dtype=dtype) for _ in layers], window)


def _project_qkv(layer: TransformerLayer, x, cos, sin):
    """The layer's attention inputs for x [B, C, hidden]: q, k [B, H(kv), C, D] after RoPE, v [B, C, Hkv, D]."""
    attn = layer.self_attn
    bsz, length, _ = x.shape
    q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
    q, k, v = attn.qkv_proj(layer.input_layernorm(x)).split((q_size, kv_size, kv_size), dim=-1)
    q = apply_rope(q.view(bsz, length, attn.num_heads, attn.head_dim).transpose(1, 2), cos, sin)
    k = apply_rope(k.view(bsz, length, attn.num_kv_heads, attn.head_dim).transpose(1, 2), cos, sin)
    return q, k, v.view(bsz, length, attn.num_kv_heads, attn.head_dim)


def _layer_step(layer: TransformerLayer, x, cos, sin, past_k, past_v, mask):
    """One pre-norm layer on x [B, C, hidden] with keys/values [B, Hkv, F, D] before it; returns (x, k, v frames)."""
    attn = layer.self_attn
    bsz, length, _ = x.shape
    q_size = attn.num_heads * attn.head_dim
    q, k, v = _project_qkv(layer, x, cos, sin)
    v = v.transpose(1, 2)
    k_frame, v_frame = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
    out = F.scaled_dot_product_attention(q, k_frame, v_frame, attn_mask=mask,
                                         enable_gqa=attn.num_kv_heads != attn.num_heads)
    x = x + attn.o_proj(out.transpose(1, 2).reshape(bsz, length, q_size))
    return x + layer.mlp(layer.post_attention_layernorm(x)), k_frame, v_frame


def _window_plan(t0: int, length: int, window: int, cfg, device, dtype):
    """RoPE for positions t0..t0+C-1 and the additive mask [1, 1, C, W-1+C] of a cached window step: frame slot j
    (W-1 past, then C new) holds position t0 - (W-1) + j; query i sees it when it is real and within the window."""
    past = window - 1
    positions = torch.arange(t0, t0 + length, device=device)
    cos, sin = rope_at(positions, cfg.head_dim, cfg.rope_theta, dtype)
    slot = torch.arange(past + length, device=device) + t0 - past
    diff = positions[:, None] - slot[None, :]
    visible = (slot[None, :] >= 0) & (diff >= 0) & (diff < window)
    mask = torch.zeros(visible.shape, device=device, dtype=dtype).masked_fill(~visible, float("-inf"))
    return cos, sin, mask[None, None]


def _window_step(layers, cfg, x: torch.Tensor, t0: int, cache: WindowCache) -> torch.Tensor:
    """x [B, C, hidden] at positions t0.. through every layer; the cache moves on by C positions."""
    cos, sin, mask = _window_plan(t0, x.shape[1], cache.window, cfg, x.device, x.dtype)
    past = cache.window - 1
    for i, layer in enumerate(layers):
        x, k_frame, v_frame = _layer_step(layer, x, cos, sin, cache.keys[i], cache.values[i], mask)
        keep = k_frame.shape[2] - past
        cache.keys[i], cache.values[i] = k_frame[:, :, keep:], v_frame[:, :, keep:]
    return x


@dataclass
class GlobalCache:
    """The global transformer's KV cache: per layer [B, Hkv, capacity, D], row r filled up to ``lengths[r]``
    (its finished patches). Grows by doubling."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor  # [B] long

    def reserve(self, needed: int) -> None:
        capacity = self.keys[0].shape[2]
        if needed <= capacity:
            return
        grow = max(needed, 2 * capacity) - capacity
        pad = lambda x: torch.cat((x, x.new_zeros((*x.shape[:2], grow, x.shape[3]))), dim=2)  # noqa: E731
        self.keys = [pad(k) for k in self.keys]
        self.values = [pad(v) for v in self.values]


@dataclass
class State:
    """Everything a row carries from byte to byte (batch-first tensors; ``select`` keeps some rows)."""

    rows: torch.Tensor  # [B] index of each row's prompt
    history: torch.Tensor  # [B, G] last G token ids (0 before the start), G = largest hash n-gram
    entropy_cache: WindowCache | None
    encoder_cache: WindowCache
    decoder_cache: WindowCache
    global_cache: GlobalCache
    open_patch: torch.Tensor  # [B, capacity, encoder hidden]: encoder states of the open patch's bytes
    open_length: torch.Tensor  # [B] long
    latest_patch: torch.Tensor  # [B, k, decoder hidden]: the latest finished patch, projected for the decoder
    prev_entropy: torch.Tensor  # [B] float32
    prev_byte: torch.Tensor  # [B] long
    last_rule_start: torch.Tensor  # [B] long: the rule's last start (max_patch_length counts from it)
    patches: torch.Tensor  # [B] long: finished patches

    def select(self, keep: torch.Tensor) -> State:
        def pick(value):
            if isinstance(value, torch.Tensor):
                return value[keep]
            if isinstance(value, (WindowCache, GlobalCache)):
                out = {f.name: pick(getattr(value, f.name)) for f in fields(value)}
                return type(value)(**out)
            if isinstance(value, list):
                return [pick(v) for v in value]
            return value

        return State(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})


# ----- the model, one byte at a time --------------------------------------------------------------------------
class IncrementalBlt:
    """Steps a ``ByteLatentTransformer`` (+ entropy model) one byte per row; see the module docstring."""

    def __init__(self, model: ByteLatentTransformer, patcher: EntropyModel | None, patching: PatchingParams) -> None:
        check_incremental(patching)
        if patching.needs_entropies and patcher is None:
            raise ValueError(f"patching mode {patching.mode!r} needs an entropy model")
        self.model, self.patcher, self.params = model, patcher, patching
        cfg = model.cfg
        self.window = cfg.local_attention_window_len or cfg.encoder_config.max_position_embeddings
        self.groups = max(cfg.encoder_hash_byte_group_size)
        self.rule = INCREMENTAL_RULES[patching.mode]
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype

    def start(self, rows: int) -> State:
        model, device, dtype = self.model, self.device, self.dtype
        enc, dec = model.local_encoder, model.local_decoder
        entropy_cache = None
        if self.params.needs_entropies:
            pc = self.patcher.cfg
            entropy_cache = _empty_window(self.patcher.stack.layers, rows, pc.sliding_window or
                                          pc.max_position_embeddings, device, dtype)
        g_layers = model.global_transformer.stack.layers
        attn = g_layers[0].self_attn
        gshape = (rows, attn.num_kv_heads, 16, attn.head_dim)
        zeros = lambda *shape, dt=torch.long: torch.zeros(shape, device=device, dtype=dt)  # noqa: E731
        return State(
            rows=torch.arange(rows, device=device),
            history=zeros(rows, self.groups),
            entropy_cache=entropy_cache,
            encoder_cache=_empty_window(enc.stack.layers, rows, self.window, device, dtype),
            decoder_cache=_empty_window(dec.stack.layers, rows, self.window, device, dtype),
            global_cache=GlobalCache([torch.zeros(gshape, device=device, dtype=dtype) for _ in g_layers],
                                     [torch.zeros(gshape, device=device, dtype=dtype) for _ in g_layers],
                                     zeros(rows)),
            open_patch=zeros(rows, 16, enc.cfg.hidden_size, dt=dtype),
            open_length=zeros(rows),
            latest_patch=zeros(rows, enc.cfg.cross_attn_k, dec.cfg.hidden_size, dt=dtype),
            prev_entropy=zeros(rows, dt=torch.float32),
            prev_byte=zeros(rows),
            last_rule_start=zeros(rows),
            patches=zeros(rows),
        )

    @torch.inference_mode()
    def step(self, state: State, tokens: torch.Tensor, t0: int, logits: bool = True):
        """Feed bytes t0..t0+C-1 (token ids [B, C]) of every row. Returns (logits [B, V] for byte t0+C, or None;
        whether each byte t0+1..t0+C opens a patch [B, C] bool). C > 1 (a prompt's bytes in parallel) keeps the
        exact same function: entropies, encoder and decoder run over the chunk at once, each finished patch once."""
        opens = self._rule(state, tokens, t0)
        x = self._encode(state, tokens, t0)  # [B, C, D]
        if tokens.shape[1] == 1:
            patches, ids = self._close_one(state, x, opens[:, 0])
        else:
            patches, ids = self._close_chunk(state, x, opens)
        return self._decode(state, x, t0, patches, ids, logits), opens

    def _rule(self, state: State, tokens: torch.Tensor, t0: int) -> torch.Tensor:
        entropies = None
        if state.entropy_cache is not None:
            patcher = self.patcher
            h = _window_step(patcher.stack.layers, patcher.cfg, patcher.embed_tokens(tokens), t0, state.entropy_cache)
            entropies = entropy_from_logits(patcher.lm_head(patcher.norm(h)))
        out = []
        for j in range(tokens.shape[1]):
            out.append(self._rule_at(state, None if entropies is None else entropies[:, j],
                                     tokens[:, j] - BYTE_OFFSET, t0 + j))
        return torch.stack(out, dim=1)

    def _rule_at(self, state: State, entropy: torch.Tensor | None, byte: torch.Tensor, t: int) -> torch.Tensor:
        params = self.params
        nxt = t + 1
        if params.mode == "static":
            opens = torch.full_like(byte, nxt < 2 or nxt % int(params.patch_size) == 0, dtype=torch.bool)
        elif t == 0:
            opens = torch.ones_like(byte, dtype=torch.bool)  # bytes 0 and 1 always start patches
        else:
            opens = self.rule(params, RuleInputs(t, entropy, state.prev_entropy, byte, state.prev_byte))
        if params.max_patch_length is not None:
            state.last_rule_start = torch.where(opens, nxt, state.last_rule_start)
            opens = opens | ((nxt - state.last_rule_start) % params.max_patch_length == 0)
        if entropy is not None:
            state.prev_entropy = entropy
        state.prev_byte = byte
        return opens

    def _encode(self, state: State, tokens: torch.Tensor, t0: int) -> torch.Tensor:
        model, cfg = self.model, self.model.cfg
        groups = state.history.shape[1]
        history = torch.cat((state.history, tokens), dim=1)  # the n-grams ending at each new byte
        state.history = history[:, -groups:]
        ids = hash_ngram_ids(history, cfg.encoder_hash_byte_group_size, cfg.encoder_hash_byte_group_nb_functions,
                             cfg.encoder_hash_byte_group_vocab)[:, groups:]
        hashed = F.embedding_bag(ids.flatten(0, 1), model.encoder_hash_tok_embedding.weight, mode="sum")
        x = model.local_encoder.embed_tokens(tokens) + hashed.view(*tokens.shape, -1)
        enc = model.local_encoder
        return _window_step(enc.stack.layers, enc.cfg, x, t0, state.encoder_cache)

    def _patch_states(self, byte_states: torch.Tensor, ids: torch.Tensor, count: int) -> torch.Tensor:
        """Encoder patch states [n, count, k * D] of patches 0..count-1 (ids == count: bytes of no patch here)."""
        enc: LocalEncoder = self.model.local_encoder
        queries = enc._pool(byte_states, ids, count + 1)
        queries = enc.patch_embedding_projection(queries).unflatten(-1, (enc.cfg.cross_attn_k, -1))
        patch = queries + enc.cross_attn_layers[-1].patches_from_bytes(queries, byte_states, ids)
        return patch[:, :count].flatten(2)

    def _for_decoder(self, global_states: torch.Tensor) -> torch.Tensor:
        dec = self.model.local_decoder
        return dec.patch_embedding_projection(global_states).unflatten(-1, (dec.cfg.cross_attn_k, -1))

    def _close_one(self, state: State, x: torch.Tensor, opens: torch.Tensor):
        """One byte per row: append it to the open patch; rows whose next byte opens a patch finish theirs."""
        rows = x.shape[0]
        if int(state.open_length.max()) >= state.open_patch.shape[1]:
            grow = state.open_patch.shape[1]
            state.open_patch = torch.cat((state.open_patch, torch.zeros_like(state.open_patch[:, :grow])), dim=1)
        state.open_patch[torch.arange(rows, device=self.device), state.open_length] = x[:, 0]
        state.open_length += 1
        closing = torch.nonzero(opens)[:, 0]
        if closing.numel():
            lengths = state.open_length[closing]
            width = int(lengths.max())
            # Padding slots belong to a second, discarded patch: patch 0 sees exactly its own bytes.
            ids = (torch.arange(width, device=self.device)[None] >= lengths[:, None]).long()
            patch = self._patch_states(state.open_patch[closing, :width], ids, 1)
            state.latest_patch[closing] = self._for_decoder(self._global_step(state, closing, patch))[:, 0]
            state.open_length[closing] = 0
            state.patches[closing] += 1
        return state.latest_patch[:, None], torch.zeros((rows, 1), dtype=torch.long, device=self.device)

    def _close_chunk(self, state: State, x: torch.Tensor, opens: torch.Tensor):
        """C bytes per row: every patch finished inside the chunk gets its encoder state and global step (row by
        row: rows finish different numbers of patches); byte j reads the latest patch finished at or before j."""
        rows, length, _ = x.shape
        per_row, dec_ids = [], []
        for r in range(rows):
            o = opens[r].long()
            closes = int(o.sum())
            held = int(state.open_length[r])
            byte_states = torch.cat((state.open_patch[r, :held], x[r]), dim=0)
            index = torch.cat((o.new_zeros(held), torch.cumsum(o, 0) - o))
            patches = state.latest_patch[r][None]
            if closes:
                new = self._patch_states(byte_states[None], index[None], closes)
                projected = self._for_decoder(self._global_step(state, torch.tensor([r], device=self.device), new))
                patches = torch.cat((patches, projected[0]), dim=0)
                state.latest_patch[r] = projected[0, -1]
                state.patches[r] += closes
                last = int(torch.nonzero(o)[-1, 0])
                rest = x[r, last + 1:]
            else:
                rest = byte_states
            if rest.shape[0] > state.open_patch.shape[1]:
                grow = rest.shape[0] - state.open_patch.shape[1]
                state.open_patch = torch.cat((state.open_patch, state.open_patch.new_zeros(
                    (rows, grow, state.open_patch.shape[2]))), dim=1)
            state.open_patch[r, : rest.shape[0]] = rest
            state.open_length[r] = rest.shape[0]
            per_row.append(patches)
            dec_ids.append(torch.cumsum(o, 0))
        width = max(p.shape[0] for p in per_row)
        patches = torch.stack([F.pad(p, (0, 0, 0, 0, 0, width - p.shape[0])) for p in per_row])
        return patches, torch.stack(dec_ids)

    def _global_step(self, state: State, rows: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """patch [n, C, k * D]: the next C finished patches of ``rows``; one causal step on their KV caches."""
        gt = self.model.global_transformer
        cache = state.global_cache
        count = patch.shape[1]
        positions = cache.lengths[rows][:, None] + torch.arange(count, device=self.device)  # [n, C]
        size = int(positions.max()) + 1
        cache.reserve(size)
        x = gt.token_embedding_projection(patch)  # [n, C, Dg]
        cos, sin = rope_at(positions, gt.cfg.head_dim, gt.cfg.rope_theta, x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # [n, 1, C, D/2]
        visible = torch.arange(size, device=self.device)[None, None] <= positions[:, :, None]  # [n, C, size]
        mask = torch.zeros(visible.shape, device=self.device, dtype=x.dtype).masked_fill(~visible, float("-inf"))
        mask = mask[:, None]  # [n, 1, C, size]
        for i, layer in enumerate(gt.stack.layers):
            x = self._global_layer(layer, x, cos, sin, cache.keys[i], cache.values[i], rows, positions, size, mask)
        cache.lengths[rows] = positions[:, -1] + 1
        return x

    @staticmethod
    def _global_layer(layer, x, cos, sin, keys, values, rows, positions, size, mask):
        attn = layer.self_attn
        n, count, _ = x.shape
        q_size = attn.num_heads * attn.head_dim
        q, k, v = _project_qkv(layer, x, cos, sin)
        keys[rows[:, None], :, positions] = k.transpose(1, 2)  # [n, C, Hkv, D] into each row's next slots
        values[rows[:, None], :, positions] = v
        out = F.scaled_dot_product_attention(q, keys[rows, :, :size], values[rows, :, :size], attn_mask=mask,
                                             enable_gqa=attn.num_kv_heads != attn.num_heads)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(n, count, q_size))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _decode(self, state: State, x: torch.Tensor, t0: int, patches: torch.Tensor, ids: torch.Tensor,
                logits: bool) -> torch.Tensor | None:
        """Byte states x [B, C, D]; byte j reads ``patches[ids[:, j]]`` [B, P, k, D]. Logits of the last byte."""
        dec = self.model.local_decoder
        cache = state.decoder_cache
        cos, sin, mask = _window_plan(t0, x.shape[1], cache.window, dec.cfg, x.device, x.dtype)
        past = cache.window - 1
        for i, layer in enumerate(dec.stack.layers):
            if i == 0 or dec.cfg.cross_attn_all_layers:
                x = x + dec.cross_attn_layers[i].bytes_from_patches(x, patches, ids)
            x, k_frame, v_frame = _layer_step(layer, x, cos, sin, cache.keys[i], cache.values[i], mask)
            keep = k_frame.shape[2] - past
            cache.keys[i], cache.values[i] = k_frame[:, :, keep:], v_frame[:, :, keep:]
        return self.model.lm_head(dec.norm(x[:, -1])) if logits else None


# ----- sampling and the loop ----------------------------------------------------------------------------------
@dataclass
class SamplingConfig:
    max_new_bytes: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.max_new_bytes < 0:
            raise ValueError("max_new_bytes must be >= 0")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("temperature must be > 0 (or use greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]; special ids (< 4) are never produced: the output is bytes."""
    logits = logits.float().clone()
    logits[:, :BYTE_OFFSET] = float("-inf")
    if cfg.greedy:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k is not None:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


@dataclass
class GenerationResult:
    prompt: bytes
    new_bytes: bytes
    patch_lengths: list[int]  # patches of prompt + new bytes
    seconds: float
    logits: torch.Tensor | None = None  # [new bytes, V] float32, when asked for
    byte_seconds: list[float] = field(default_factory=list)  # wall time of each step that produced a new byte
    byte_cpu_seconds: list[float] = field(default_factory=list)  # the same steps' CPU time (this thread)

    @property
    def text(self) -> bytes:
        return self.prompt + self.new_bytes

    @property
    def patches(self) -> int:
        return len(self.patch_lengths)

    @property
    def bytes_per_s(self) -> float:
        return len(self.new_bytes) / self.seconds if self.seconds > 0 else float("inf")


def generate(
    model: ByteLatentTransformer,
    patcher: EntropyModel | None,
    prompts: list[bytes],
    patching: PatchingParams,
    max_new_bytes: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    greedy: bool = False,
    on_bytes: OnBytes | None = None,
    return_logits: bool = False,
    prefill_chunk: int = 256,
) -> list[GenerationResult]:
    """Continue each prompt by ``max_new_bytes`` bytes. ``on_bytes(i, data)`` is called as bytes arrive.
    Prompt bytes that every row still feeds go through in chunks of ``prefill_chunk`` (1 = byte by byte)."""
    cfg = SamplingConfig(max_new_bytes, temperature, top_k, top_p, seed, greedy)
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one byte")
    runner = IncrementalBlt(model, patcher, patching)
    device = runner.device
    generator = torch.Generator().manual_seed(seed)
    count = len(prompts)
    tokens = [list(p) for p in prompts]  # byte values, prompt then generated
    starts: list[list[int]] = [[0] for _ in prompts]  # patch start positions
    logits_out: list[list[torch.Tensor]] = [[] for _ in prompts]
    byte_seconds: list[list[float]] = [[] for _ in prompts]
    byte_cpu: list[list[float]] = [[] for _ in prompts]
    finished = [0.0] * count
    began = time.perf_counter()
    total = [len(p) + max_new_bytes for p in prompts]
    state = runner.start(count)
    t = 0
    shared = min(len(p) for p in prompts) - 1  # prompt bytes every row feeds before any row predicts
    while t < shared:  # in parallel, chunk by chunk
        size = min(prefill_chunk, shared - t)
        feed = torch.tensor([list(p[t: t + size]) for p in prompts], device=device) + BYTE_OFFSET
        _, opens = runner.step(state, feed, t, logits=False)
        for r, row in enumerate(opens.tolist()):
            starts[r].extend(t + 1 + j for j, o in enumerate(row) if o)
        t += size
    while state.rows.numel():
        step_began, step_cpu = time.perf_counter(), time.thread_time()
        rows = state.rows.tolist()
        feed = torch.tensor([[tokens[r][t]] for r in rows], device=device) + BYTE_OFFSET
        logits, opens = runner.step(state, feed, t)
        for r, o in zip(rows, opens[:, 0].tolist()):
            if o:
                starts[r].append(t + 1)
        producing = [i for i, r in enumerate(rows) if t + 1 >= len(prompts[r]) and t + 1 < total[r]]
        if producing:
            chosen = sample(logits[producing], cfg, generator).tolist()
            for i, token in zip(producing, chosen):
                r = rows[i]
                tokens[r].append(token - BYTE_OFFSET)
                if return_logits:
                    logits_out[r].append(logits[i].float().cpu())
                if on_bytes is not None:
                    on_bytes(r, bytes([token - BYTE_OFFSET]))
        now, cpu = time.perf_counter(), time.thread_time()
        for i in producing:
            byte_seconds[rows[i]].append(now - step_began)
            byte_cpu[rows[i]].append(cpu - step_cpu)
        done = [t + 2 >= total[r] for r in rows]  # the next byte would be fed with nothing left to predict
        if any(done):
            for r, d in zip(rows, done):
                if d:
                    finished[r] = now - began
            keep = torch.tensor([not d for d in done], device=device)
            state = state.select(keep)
        t += 1
    results = []
    for r, prompt in enumerate(prompts):
        length = len(tokens[r])
        bounds = [s for s in starts[r] if s < length] + [length]
        results.append(GenerationResult(
            prompt=bytes(prompt), new_bytes=bytes(tokens[r][len(prompt):]),
            patch_lengths=[b - a for a, b in zip(bounds[:-1], bounds[1:])], seconds=finished[r],
            logits=torch.stack(logits_out[r]) if return_logits and logits_out[r] else None,
            byte_seconds=byte_seconds[r], byte_cpu_seconds=byte_cpu[r]))
    return results
