"""Slow, obvious references for every fast kernel. Fast code is compared against these in tests.

Each section belongs to one module of bitsub; keep them simple enough to be right by inspection.
"""

from __future__ import annotations

import numpy as np  # noqa: F401

from bitsub.model.network import NetworkOps, parse_network, run_network

# -------------------------------------------------------- bit fields (bitsub.codecs.bitfield)


def naive_pack_bits(codes, bits):
    """Codes -> list of 0/1 bits, MSB first, padded with zeros to whole bytes -> bytes list."""
    stream = []
    for c in [int(x) for x in np.asarray(codes).reshape(-1)]:
        stream.extend((c >> (bits - 1 - j)) & 1 for j in range(bits))
    while len(stream) % 8:
        stream.append(0)
    return [int("".join(str(b) for b in stream[i : i + 8]), 2) for i in range(0, len(stream), 8)]


def naive_unpack_bits(data, bits, count):
    """Bytes -> list of 0/1 bits (MSB first) -> ``count`` codes of ``bits`` bits."""
    stream = []
    for byte in bytes(bytearray(int(x) for x in data)):
        stream.extend((byte >> (7 - j)) & 1 for j in range(8))
    return [
        int("".join(str(b) for b in stream[i * bits : (i + 1) * bits]), 2) if bits else 0
        for i in range(count)
    ]


def naive_read_field(word, shift, bits):
    """Bits [shift, shift+bits) of a Python int, bit by bit."""
    return sum(((word >> (shift + j)) & 1) << j for j in range(bits))


def naive_write_field(word, shift, bits, value):
    """Python int ``word`` with bits [shift, shift+bits) replaced by the low bits of value."""
    for j in range(bits):
        bit = (value >> j) & 1
        if bit:
            word |= 1 << (shift + j)
        else:
            word &= ~(1 << (shift + j))
    return word


# ---------------------------------------------------- Huffman masks (bitsub.codecs.maskcodec)


def naive_huffman_lengths(freqs):
    """Code lengths of a textbook Huffman tree (heap of subtrees; no length limit)."""
    import heapq

    used = [s for s, f in enumerate(freqs) if f > 0]
    lengths = [0] * len(freqs)
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    heap = [(int(freqs[s]), s, [s]) for s in used]
    heapq.heapify(heap)
    tie = len(freqs)
    while len(heap) > 1:
        fa, _, a = heapq.heappop(heap)
        fb, _, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1
        heapq.heappush(heap, (fa + fb, tie, a + b))
        tie += 1
    return lengths


def naive_limited_huffman_cost(freqs, max_length):
    """Least sum(freq * length) over all complete codes with lengths in 1..max_length (tiny n)."""
    import itertools

    used = [int(f) for f in freqs if f > 0]
    if len(used) <= 1:
        return sum(used)
    best = None
    for lengths in itertools.product(range(1, max_length + 1), repeat=len(used)):
        if sum(2.0**-length for length in lengths) == 1.0:
            cost = sum(f * length for f, length in zip(used, lengths))
            best = cost if best is None else min(best, cost)
    return best


def naive_canonical_code(lengths):
    """Dict symbol -> code as a '0'/'1' string: by (length, symbol), each code the previous + 1."""
    code = {}
    value = 0
    prev_len = 0
    for s in sorted((s for s in range(len(lengths)) if lengths[s] > 0),
                    key=lambda s: (lengths[s], s)):
        value <<= lengths[s] - prev_len
        code[s] = format(value, f"0{lengths[s]}b")
        value += 1
        prev_len = lengths[s]
    return code


def naive_huffman_encode(symbols, code):
    """Concatenated code strings, zero padded to whole bytes, as bytes."""
    bits = "".join(code[int(s)] for s in symbols)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def naive_huffman_decode(data, code, count):
    """Read bit by bit, looking the bits so far up in a dict code-string -> symbol."""
    inverse = {c: s for s, c in code.items()}
    bits = "".join(format(b, "08b") for b in data)
    out = []
    cur = ""
    for b in bits:
        if len(out) == count:
            break
        cur += b
        if cur in inverse:
            out.append(inverse[cur])
            cur = ""
    if len(out) != count:
        raise ValueError("ran out of bits")
    return out


def naive_runs_payload(bits, minority, code, esc_run, extra=0):
    """Payload bytes of the runs scheme (one segment): for each minority bit and the virtual one
    at the end, the run r of majority bits before it as escapes (symbol esc_run, each for
    esc_run << extra bits) and the symbol (r >> extra) % esc_run, then r's `extra` low bits."""
    out = ""
    run = 0
    for b in list(bits) + [minority]:
        if b != minority:
            run += 1
            continue
        q = run >> extra
        while q >= esc_run:
            out += code[esc_run]
            q -= esc_run
        out += code[q]
        if extra:
            out += format(run & ((1 << extra) - 1), f"0{extra}b")
        run = 0
    out += "0" * (-len(out) % 8)
    return bytes(int(out[i : i + 8], 2) for i in range(0, len(out), 8))


def naive_decode_runs_payload(data, n, minority, code, esc_run, extra=0):
    """Inverse of naive_runs_payload: the n mask bits, read bit by bit with a dict decoder."""
    inverse = {c: s for s, c in code.items()}
    stream = iter("".join(format(b, "08b") for b in data))
    bits = []
    while True:
        cur = ""
        while cur not in inverse:
            cur += next(stream)
        s = inverse[cur]
        if s == esc_run:
            bits += [1 - minority] * (esc_run << extra)
            continue
        low = int("".join(next(stream) for _ in range(extra)), 2) if extra else 0
        bits += [1 - minority] * ((s << extra) | low)
        if len(bits) >= n:
            return bits
        bits.append(minority)


def naive_bytes_payload(bits, code):
    """Payload of the bytes scheme (one segment): each 8 positions as a byte, position i as bit
    i % 8 (little-endian), the last byte zero padded, each byte written as its code string."""
    bits = list(bits) + [0] * (-len(bits) % 8)
    out = ""
    for i in range(0, len(bits), 8):
        out += code[sum(bits[i + j] << j for j in range(8))]
    out += "0" * (-len(out) % 8)
    return bytes(int(out[i : i + 8], 2) for i in range(0, len(out), 8))


def naive_decode_bytes_payload(data, n, code):
    """Inverse of naive_bytes_payload: n positions, read bit by bit with a dict decoder."""
    symbols = naive_huffman_decode(data, code, (n + 7) // 8)
    return [(b >> j) & 1 for b in symbols for j in range(8)][:n]


# ---------------------------------------------------------------- K-Means (bitsub.quant.kmeans)


def naive_sse(values, centroids, codes):
    """Sum of squared errors of quantizing values to centroids[codes], in float64."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    q = np.asarray(centroids, dtype=np.float64)[np.asarray(codes).reshape(-1)]
    return float(((v - q) ** 2).sum())


def naive_kmeans_1d_min_sse(values, k):
    """Exact minimum 1-D K-Means SSE by trying every split of the sorted values into runs."""
    from itertools import combinations

    x = sorted(float(v) for v in np.asarray(values).reshape(-1))
    n = len(x)
    parts = min(k, n)
    best = float("inf")
    for cuts in combinations(range(1, n), parts - 1):
        bounds = (0, *cuts, n)
        sse = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            run = x[a:b]
            mean = sum(run) / len(run)
            sse += sum((v - mean) ** 2 for v in run)
        best = min(best, sse)
    return best


def naive_run_sse(run):
    """SSE of one run of values around its mean, two passes with exact (fsum) sums."""
    from math import fsum

    run = [float(v) for v in run]
    mean = fsum(run) / len(run)
    return fsum((v - mean) ** 2 for v in run)


def naive_dp_min_sse(values, k):
    """Least SSE of splitting the sorted values into min(k, distinct) runs: the textbook DP.

    ``best[j][i]`` = least SSE of the first i values in j runs, every run's SSE recomputed
    from its values (O(k n^3)); equal values are never split across runs (a split between
    duplicates is never better).
    """
    x = sorted(float(v) for v in np.asarray(values).reshape(-1))
    n = len(x)
    cuts = [i for i in range(1, n) if x[i] != x[i - 1]]  # allowed run starts
    k = min(k, len(cuts) + 1)
    inf = float("inf")
    ends = [*cuts, n]
    best = {0: 0.0}  # end index -> least SSE with j runs
    for _ in range(k):
        nxt = {}
        for e in ends:
            cands = [best[a] + naive_run_sse(x[a:e]) for a in best if a < e]
            nxt[e] = min(cands, default=inf)
        best = nxt
    return best[n]


def naive_panter_dite(w, u, spread, k):
    """Panter-Dite SSE per cluster from groups (prefix counts w, ascending values u), numpy.

    Bins at the 16 k quantiles by count; a bin of c values from a to b adds
    ``cbrt((b - a + spread)^2 c / n)`` to the integral of f^(1/3) (an exact fsum here); the
    estimate is ``n / (12 k^2) * integral^3 / k``.
    """
    from math import fsum

    w = np.asarray(w, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    n = float(w[-1])
    nb = 16 * k
    cuts = np.searchsorted(w, np.arange(1, nb) * (n / nb), side="left")
    cuts = np.unique(np.concatenate([[0], cuts, [u.size]]))
    width = u[cuts[1:] - 1] - u[cuts[:-1]] + spread
    count = w[cuts[1:]] - w[cuts[:-1]]
    ok = width > 0
    integral = fsum(np.cbrt(width[ok] * width[ok] * (count[ok] / n)).tolist())
    return n / (12.0 * k * k) * integral**3 / k


def naive_lookup(cent, lo, scale, cells):
    """Midpoints, first indices and the grid tables of the nearest-centroid lookup, numpy.

    ``cent`` ascending float32; the grid edges are ``lo + g / scale`` (all ``lo`` when scale
    is 0); ``table[g]`` counts the midpoints below edge g; ``sure[g]`` is ``table[g]`` when
    edges g - 1 and g + 2 (clamped) see the same count, else -1, and -1 in the last cell.
    """
    uniq, first = np.unique(np.asarray(cent, dtype=np.float32), return_index=True)
    mids = 0.5 * (uniq[:-1].astype(np.float64) + uniq[1:].astype(np.float64))
    g = np.arange(cells + 1)
    edges = lo + g / scale if scale > 0 else np.full(cells + 1, float(lo))
    table = np.searchsorted(mids, edges, side="left")
    before = table[np.maximum(g[:-1] - 1, 0)]
    after = table[np.minimum(g[:-1] + 2, cells)]
    sure = np.where(before == after, table[:-1], -1)
    sure[-1] = -1
    return mids, first, table, sure


def naive_merge_groups(w, s, q, b, target, tau):
    """Greedy merge of consecutive groups (boundaries b): a merged group is closed before a
    group when it already holds ``target`` values, or when taking that group in would lift its
    SSE (read from the prefix sums) above ``tau``."""
    out = [int(b[0])]
    for i in range(1, len(b) - 1):
        g0, e = out[-1], int(b[i + 1])
        full = w[b[i]] - w[g0] >= target
        cs = s[e] - s[g0]
        if full or (q[e] - q[g0]) - cs * cs / (w[e] - w[g0]) > tau:
            out.append(int(b[i]))
    out.append(int(b[-1]))
    return out


def naive_levels(w, s, q, k, top, tau, refine, lean_max, lean_top, lean_tau):
    """The levels of "auto" as a list of boundary lists, finest (every group) first.

    Level sizes grow by ``refine`` up to ``top`` values (SSE cap ``tau * (size / top)^3``);
    a level of at most 2k groups ends the climb; a level with more than 3/4 of the groups of
    the one below replaces it (never the finest). With ``lean_max`` > 0 and more groups than
    that at the top, one more merge (``lean_top`` values, cap ``lean_tau``), kept when it
    has more than k groups.
    """
    levels = [list(range(len(w)))]
    target = 1.0

    def add(b):
        if len(levels) > 1 and 4 * (len(b) - 1) > 3 * (len(levels[-1]) - 1):
            levels.pop()
        levels.append(b)

    while target < top and len(levels) < 62:
        target *= refine
        b = naive_merge_groups(w, s, q, levels[-1], target, tau * min(1.0, target / top) ** 3)
        if len(b) - 1 <= 2 * k:
            break
        add(b)
    if lean_max > 0 and len(levels[-1]) - 1 > lean_max:
        b = naive_merge_groups(w, s, q, levels[-1], lean_top, lean_tau)
        if len(b) - 1 > k:
            add(b)
    return levels


def naive_band_dp(w, s, q, lo, hi):
    """Least-SSE boundaries with boundary j in [lo[j], hi[j]]: the textbook DP over the bands.

    A run's SSE is read from the prefix sums (clamped at 0); O(k W^2) for bands of width W.
    """
    k = len(lo) - 1

    def cost(a, b):
        cs = s[b] - s[a]
        return max(q[b] - q[a] - cs * cs / (w[b] - w[a]), 0.0)

    best = {0: (0.0, None)}
    layers = [best]
    for j in range(1, k + 1):
        cur = {}
        for i in range(lo[j], hi[j] + 1):
            cands = [(best[a][0] + cost(a, i), a) for a in best if a < i]
            if cands:
                cur[i] = min(cands)
        best = cur
        layers.append(best)
    t = [0] * (k + 1)
    t[k] = hi[k]
    for j in range(k, 0, -1):
        t[j - 1] = layers[j][t[j]][1]
    return t, layers[k][t[k]][0]


def naive_refine_band(w, s, q, idx, lo_start, hi_start, max_recentre):
    """"auto"'s band refinement in plain Python: boundary j starts at idx[j] (made feasible:
    within [j, m - k + j], strictly increasing) with a band reaching lo_start[j] below and
    hi_start[j] above (at least 1 each way); the band DP (:func:`naive_band_dp`) reruns with
    the bands moved onto its answer while an answer rests on an inner band edge, at most
    ``max_recentre`` times. Returns the boundaries and their SSE."""
    m = len(w) - 1
    k = len(idx) - 1
    t = [min(max(int(idx[j]), j), m - k + j) for j in range(k + 1)]
    t[0], t[k] = 0, m
    for j in range(1, k + 1):
        t[j] = max(t[j], t[j - 1] + 1)
    for j in range(k - 1, -1, -1):
        t[j] = min(t[j], t[j + 1] - 1)
    below = [max(t[j] - int(lo_start[j]), 1) for j in range(k + 1)]
    above = [max(int(hi_start[j]) - t[j], 1) for j in range(k + 1)]
    sse = None
    for _ in range(max_recentre):
        lo = [max(j, t[j] - below[j]) for j in range(k + 1)]
        hi = [min(m - k + j, t[j] + above[j]) for j in range(k + 1)]
        for j in range(1, k + 1):
            lo[j] = max(lo[j], lo[j - 1])
        for j in range(k - 1, -1, -1):
            hi[j] = min(hi[j], hi[j + 1])
        t, sse = naive_band_dp(w, s, q, lo, hi)
        if not any((t[j] == lo[j] and lo[j] > j) or (t[j] == hi[j] and hi[j] < m - k + j)
                   for j in range(k + 1)):
            break
    return t, sse


# -------------------------------------------------------- packed model (bitsub.model.packed)


def naive_word_fields(word, word_bits, prefix_bits, bits_of_prefix):
    """A word (Python int) as a string of bits, cut into (prefix, code) fields from the left.

    ``bits_of_prefix[p]`` is the code width of the task with prefix p. Stops at prefix 0 or when
    fewer than ``prefix_bits`` bits are left.
    """
    text = format(int(word), "b").zfill(word_bits)
    fields = []
    pos = 0
    while pos + prefix_bits <= word_bits:
        p = int(text[pos : pos + prefix_bits], 2)
        if p == 0:
            break
        b = bits_of_prefix[p]
        code = int(text[pos + prefix_bits : pos + prefix_bits + b], 2)
        fields.append((p, code))
        pos += prefix_bits + b
    return fields


def naive_packed_weights(pm, task, layer):
    """Task ``task``'s weights in ``layer``, read bit by bit through PackedModel's public accessors.

    Read rule: 0 where the mask is 0, else the value of the field written by the latest task of
    the same bank whose prefix is <= the task's prefix.
    """
    bank = pm.bank(task)
    members = pm.bank_tasks(bank)
    bits_of_prefix = {j + 1: pm.bits(t, layer) for j, t in enumerate(members)}
    mine = pm.prefix(task)
    words = [int(w) for w in pm.words(layer, bank)]
    mask = pm.mask(task, layer).reshape(-1).tolist()
    out = []
    for i, word in enumerate(words):
        if not mask[i]:
            out.append(np.float32(0.0))
            continue
        mine_fields = [(p, c) for p, c in naive_word_fields(
            word, pm.word_bits, pm.prefix_bits, bits_of_prefix) if p <= mine]
        p, code = mine_fields[-1]  # IndexError = a used position nobody wrote: a bug
        owner = members[p - 1]
        cb = pm.codebook(owner, layer)
        if cb is None:
            out.append(np.array([code], dtype=np.uint32).view(np.float32)[0])
        else:
            out.append(np.float32(cb[code]))
    return np.array(out, dtype=np.float32).reshape(pm.shape(layer))


def naive_words_hash(words):
    """bitsub.model.packed.words_hash with Python integers, word by word."""
    k1, k2, full = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, (1 << 64) - 1
    h = 0
    for i, w in enumerate(int(x) for x in words):
        m = (w + (i + 1) * k1) & full
        m ^= m >> 31
        m = (m * k2) & full
        m ^= m >> 29
        h = (h + m) & full
    return h


def naive_codes_of(words, word_bits, prefix_bits, bits_of_prefix, prefix):
    """Where the task with ``prefix`` wrote and its codes in position order, on bit strings.

    ``bits_of_prefix[p]`` is the bit-width of the bank's task with prefix p (index 0 unused).
    Returns (bool array, list of int codes).
    """
    write, codes = [], []
    for word in words:
        text = format(int(word), "b").zfill(word_bits)
        pos, found = 0, None
        while pos + prefix_bits <= word_bits:
            p = int(text[pos : pos + prefix_bits], 2)
            if p == 0 or p > prefix:
                break
            b = bits_of_prefix[p]
            if p == prefix:
                found = int(text[pos + prefix_bits : pos + prefix_bits + b], 2)
                break
            pos += prefix_bits + b
        write.append(found is not None)
        if found is not None:
            codes.append(found)
    return np.array(write, bool), codes


# ---------------------------------------------------------------- matmul (bitsub.kernels.matmul)


def naive_resolved_weights(mask, source, codes, codebooks):
    """Dense float32 weights, position by position: the writer's codebook[code], raw if None."""
    mask = np.asarray(mask)
    w = np.zeros(mask.shape, np.float32)
    for idx in np.ndindex(mask.shape):
        if mask[idx]:
            cb = codebooks[int(source[idx])]
            code = int(codes[idx])
            if cb is None:
                w[idx] = np.array([code], np.uint32).view(np.float32)[0]
            else:
                w[idx] = cb[code]
    return w


def naive_dense_matmul(w, x):
    """x @ w.T from fully decoded weights, in float64, one dot product per (sample, row)."""
    w2 = np.asarray(w, np.float64).reshape(len(w), -1)
    x2 = np.atleast_2d(np.asarray(x, np.float64))
    y = np.empty((x2.shape[0], w2.shape[0]))
    with np.errstate(invalid="ignore", over="ignore"):
        for b in range(x2.shape[0]):
            for i in range(w2.shape[0]):
                y[b, i] = np.sum(w2[i] * x2[b])
    return y[0] if np.ndim(x) == 1 else y


def naive_conv2d_loops(x, w, stride=1, padding=0):
    """Cross-correlation of x (N, C, H, W) with w (O, C, kh, kw) by explicit loops, float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for b in range(n):
        for f in range(o):
            for p in range(oh):
                for q in range(ow):
                    acc = 0.0
                    for ch in range(c):
                        for u in range(kh):
                            for v in range(kw):
                                acc += w[f, ch, u, v] * x[b, ch, p * stride + u, q * stride + v]
                    out[b, f, p, q] = acc
    return out


# ------------------------------ torch layers and networks (bitsub_torch, bitsub.model.network)


def naive_topk_mask(scores, k):
    """Bool mask of the k entries of largest |score| (sorted, ties broken by position)."""
    flat = np.abs(np.asarray(scores, dtype=np.float64)).reshape(-1)
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    mask = np.zeros(flat.size, dtype=bool)
    for i in order[:k]:
        mask[i] = True
    return mask.reshape(np.shape(scores))


def naive_quantize(x, codebook):
    """Each value replaced by its nearest centroid (a tie goes to the smaller centroid)."""
    cents = sorted(float(c) for c in np.asarray(codebook).reshape(-1))
    out = []
    for v in np.asarray(x, dtype=np.float64).reshape(-1):
        best = cents[0]
        for c in cents[1:]:
            if abs(v - c) < abs(v - best):
                best = c
        out.append(best)
    return np.array(out).reshape(np.shape(x))


def naive_conv2d(x, w, stride=1, padding=0):
    """Direct 2-D convolution (cross-correlation) of x (N, C, H, W) with w (O, C, k, k)."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out


def naive_pool2d(x, kernel, stride, reduce):
    """Max or average pooling by explicit windows."""
    n, c, h, w = x.shape
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = x[:, :, i * stride : i * stride + kernel, j * stride : j * stride + kernel]
            out[:, :, i, j] = reduce(win.reshape(n, c, -1), axis=2)
    return out


class NaiveOps(NetworkOps):
    """float64 backend of the network interpreter with dense masked weights (eval mode)."""

    def __init__(self, weights, private):
        self.weights, self.private = weights, private

    def param(self, step, key):
        return None if key is None else np.asarray(self.private[key], dtype=np.float64)

    def linear(self, step, x):
        return x @ np.asarray(self.weights[step.layer], dtype=np.float64).T

    def conv2d(self, step, x):
        return naive_conv2d(x, np.asarray(self.weights[step.layer], dtype=np.float64),
                            step.stride, step.padding)

    def relu(self, step, x):
        return np.maximum(x, 0)

    def pool(self, step, x):
        reduce = np.max if step.op == "maxpool2d" else np.mean
        return naive_pool2d(x, step.kernel, step.stride, reduce)

    def batchnorm(self, step, x, mean, var, weight, bias):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes) if mean is None else mean
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes) if var is None else var
        x = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + step.eps)
        if weight is not None:
            x = x * weight.reshape(shape)
        if bias is not None:
            x = x + bias.reshape(shape)
        return x

    def matmul_t(self, step, x, w):
        return x @ w.T


def naive_run_steps(steps, weights, private, x):
    """Interpret bitsub network steps in float64 (eval mode) with dense masked weights.

    The walk and the defaults are bitsub's one interpreter (``bitsub.model.network``); every op
    is computed here by explicit loops or plain NumPy in float64.
    """
    return run_network(parse_network(steps), np.asarray(x, dtype=np.float64),
                       NaiveOps(weights, private))


# ------------------------------------------- EsaCL and replay (bitsub_torch.cl.esacl, .replay)


def naive_reservoir(size, seen, count, draw):
    """Algorithm R, one example at a time: slot of each of ``count`` new examples, or -1.

    ``draw(n)`` returns a uniform integer in [0, n] (the same generator calls as the fast code).
    """
    out = []
    for i in range(count):
        n = seen + i
        if n < size:
            out.append(n)
        else:
            j = draw(n)
            out.append(j if j < size else -1)
    return out


def naive_top_k(scores, k):
    """Flat indices of the k largest scores, ties by lower index (sorted list of pairs)."""
    flat = [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
    ranked = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    return sorted(ranked[:k])


def naive_lmo_value(m, k, radius):
    """min over the K-sparse polytope of <m, v>: -radius times the sum of the k largest |m|."""
    mags = sorted((abs(float(x)) for x in np.asarray(m, dtype=np.float64).reshape(-1)),
                  reverse=True)
    return -radius * sum(mags[:k])


def naive_sfw_step(p, grad, buf, k, radius, lr, mu):
    """One stochastic Frank-Wolfe step in float64: returns (new p, new momentum buffer)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    g = np.asarray(grad, dtype=np.float64).reshape(-1)
    if buf is None:
        m = g.copy()
    else:
        m = mu * np.asarray(buf, dtype=np.float64).reshape(-1) + (1 - mu) * g
    v = np.zeros_like(p)
    for i in naive_top_k(np.abs(m), k):
        v[i] = -radius * np.sign(m[i])
    gap = np.sqrt(np.sum((p - v) ** 2))
    if gap == 0:
        return p, m
    eta = min(max(lr * np.sqrt(np.sum(g ** 2)) / gap, 0.0), 1.0)
    return (1 - eta) * p + eta * v, m


# ------------------------------------------------------------- multi-task (bitsub_torch.mtl)
def naive_overlay_pairs(images, labels, n, rng):
    """MultiMNIST canvases one example at a time (twin of data.multitask.overlay_pairs)."""
    i = rng.integers(0, len(images), n)
    j = rng.integers(0, len(images), n)
    shifts = rng.integers(0, 4, (n, 4))
    canvas = np.zeros((n, 1, 36, 36), np.float32)
    for k in range(n):
        a, b, c, d = shifts[k]
        for r in range(28):
            for s in range(28):
                canvas[k, 0, a + r, b + s] = max(canvas[k, 0, a + r, b + s], images[i[k], r, s])
                canvas[k, 0, 5 + c + r, 5 + d + s] = max(canvas[k, 0, 5 + c + r, 5 + d + s],
                                                         images[j[k], r, s])
    return canvas, labels[i], labels[j]


def naive_soft_threshold(w, theta):
    """S(W, theta) = sign(W) relu(|W| - sigmoid(theta)), element by element in float64."""
    s = 1.0 / (1.0 + np.exp(-float(theta)))
    out = np.zeros(w.shape)
    for idx, v in np.ndenumerate(w):
        out[idx] = np.sign(v) * max(abs(float(v)) - s, 0.0)
    return out


def naive_read_rule(history, task, shape):
    """The values task ``task`` reads: the latest write of its bank by a task <= it, else 0.

    ``history[t]`` is ``(bank, write bool array, values of the written positions in C order)``.
    """
    bank = history[task][0]
    out = np.zeros(shape, np.float32)
    for t in range(task + 1):
        b, write, values = history[t]
        if b != bank:
            continue
        k = 0
        for i in range(write.size):  # position by position, C order
            if write.reshape(-1)[i]:
                out.reshape(-1)[i] = values[k]
                k += 1
    return out


def naive_lazy_rows_gather(base, rows, columns, table=None):
    """The eager twin of `bitsub_torch.data.streaming.LazyRows`: ``base[rows][:, columns]``
    (through ``table`` when given), element by element."""
    rows = range(len(base)) if rows is None else rows
    cols = range(base.shape[1]) if columns is None else columns
    out = np.zeros((len(rows), base.shape[1]), dtype=base.dtype if table is None else table.dtype)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            out[i, j] = base[r, c] if table is None else table[int(base[r, c])]
    return out


def naive_idx_standardise(train, test):
    """MNIST-style 8-bit images standardised by the float32 path that
    `bitsub_torch.data.scenarios` replaced with codes: the whole images scaled to float32 pixel
    / 255, the mean ``x.mean(dtype=float64)`` of the training images, their squared deviations
    summed in steps of 4096 rows, every image written as ``(x - mean) / std`` in float32.
    Returns (train, test, mean, std)."""
    xs = []
    for x in (train, test):
        x = x.reshape(len(x), -1).astype(np.float32)
        x /= 255.0
        xs.append(x)
    mean = xs[0].mean(dtype=np.float64)
    squares = 0.0
    for start in range(0, len(xs[0]), 4096):
        d = xs[0][start : start + 4096] - mean
        squares = squares + np.sum(d * d)
    std = np.sqrt(squares / max(xs[0].size, 1))
    std = np.where(std > 0, std, 1.0)
    out = [((x - mean) / std).astype(np.float32) for x in xs]
    return out[0], out[1], mean, std


# ------------------------------------------------ words rebuilt at load (bitsub.model.rebuild)


def naive_build_words(writes, codes, bits, prefix_bits, word_bits):
    """One bank's words as Python ints, field by field: the twin of ``rebuild.build_words``.

    ``writes[p]``: the flat bool write mask of the task with prefix p + 1; ``codes[p]``: its
    codes in position order (as ints). Each position's fields are appended from the most
    significant bit down, ``[prefix][code]``, in prefix order, as a string of bits. Returns
    (words, used, full): ``full`` counts the fields that did not fit (their words are then
    not compared).
    """
    n = len(writes[0]) if writes else 0
    text = [""] * n
    taken = [0] * len(writes)
    full = 0
    for p, (write, b) in enumerate(zip(writes, bits)):
        for i in range(n):
            if write[i]:
                field = format(p + 1, "b").zfill(prefix_bits) + format(
                    int(codes[p][taken[p]]), "b").zfill(b)
                taken[p] += 1
                if len(text[i]) + len(field) > word_bits:
                    full += 1
                text[i] += field
    words = [int(t.ljust(word_bits, "0")[:word_bits], 2) for t in text]
    return words, [len(t) for t in text], full


# ------------------------------------------------------ fine bins of values (bitsub.quant.bins)


def naive_cell_stats(values, lo, hi, cells):
    """Per-cell count and exact (fsum) sums of offsets from the cell's left edge, and squares.

    Cell of v: ``int((v - lo) * (cells / (hi - lo)))`` clamped to [0, cells - 1]; its left
    edge ``lo + g * ((hi - lo) / cells)``, in float64 as written.
    """
    from math import fsum

    scale = cells / (hi - lo)
    width = (hi - lo) / cells
    offsets = [[] for _ in range(cells)]
    for v in np.asarray(values).reshape(-1):
        v = float(v)
        g = min(max(int((v - lo) * scale), 0), cells - 1)
        offsets[g].append(v - (lo + g * width))
    cnt = np.array([len(o) for o in offsets], dtype=np.float64)
    sl = np.array([fsum(o) for o in offsets])
    ql = np.array([fsum(d * d for d in o) for o in offsets])
    return cnt, sl, ql, width


# ------------------------------------------- mask code-length tables (bitsub.codecs.maskio)


def naive_length_table(lengths):
    """Code lengths as deltas ("0": same, "10": +1, "110": -1, "111" + 5 bits), zero padded."""
    bits = ""
    prev = 0
    for length in [int(v) for v in lengths]:
        d = length - prev
        bits += {0: "0", 1: "10", -1: "110"}.get(d, f"111{length:05b}")
        prev = length
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


# ------------------------ mask runs: scans, group tables (bitsub.codecs.maskscan, maskdecode)


def naive_find_runs(bits, minority, seg_ends, hist_size):
    """Runs of majority bits before each minority bit and before each segment's end (a virtual
    minority bit there), as lists: (runs, hist, seg_runs, big); hist[r] counts runs r below
    hist_size - 1, hist[-1] the rest, which big lists in order; seg_runs[j] = runs up to the
    end of segment j."""
    runs, seg_runs = [], []
    start = 0
    for end in seg_ends:
        run = 0
        for b in bits[start:end]:
            if b == minority:
                runs.append(run)
                run = 0
            else:
                run += 1
        runs.append(run)
        seg_runs.append(len(runs))
        start = end
    hist = [0] * hist_size
    for r in runs:
        hist[min(r, hist_size - 1)] += 1
    big = [r for r in runs if r >= hist_size - 1]
    return runs, hist, seg_runs, big


def naive_run_groups(code, table_bits, esc, extra, max_runs=4, max_offset=1023):
    """For each table_bits-bit string v (MSB first): the runs decoded from its start while their
    codes and `extra` low bits fit, up to max_runs, none the escape `esc`, and the offsets of
    their minority bits (each at most max_offset). Returns a list of (bits used, offsets)."""
    inverse = {c: s for s, c in code.items()}
    out = []
    for v in range(1 << table_bits):
        text = format(v, f"0{table_bits}b")
        used, after, offsets = 0, 0, []
        while len(offsets) < max_runs:
            cur = ""
            while cur not in inverse and used + len(cur) < table_bits:
                cur += text[used + len(cur)]
            if cur not in inverse or inverse[cur] == esc or used + len(cur) + extra > table_bits:
                break
            low = text[used + len(cur) : used + len(cur) + extra]
            run = (inverse[cur] << extra) | (int(low, 2) if extra else 0)
            if after + run > max_offset:
                break
            offsets.append(after + run)
            after += run + 1
            used += len(cur) + extra
        out.append((used, offsets))
    return out


def naive_alt_payload(values, codes, escapes):
    """Payload of the runs01 scheme (one segment): values alternate between code 0 (runs of 0s)
    and code 1; each as escapes (symbol escapes[parity], worth that much) and the rest."""
    out = ""
    for i, v in enumerate(values):
        par = i % 2
        while v >= escapes[par]:
            out += codes[par][escapes[par]]
            v -= escapes[par]
        out += codes[par][v]
    out += "0" * (-len(out) % 8)
    return bytes(int(out[i : i + 8], 2) for i in range(0, len(out), 8))


# ----------------------------------------- packed mask counts at load (bitsub.model.placement)


def naive_packed_mask_stats(mask_bits, write_bits):
    """(written outside mask, in mask but not written, written) of two packed masks, bit by bit:
    the twin of ``placement._packed_mask_stats``."""
    outside = reuse = written = 0
    for m_byte, w_byte in zip(mask_bits.tolist(), write_bits.tolist()):
        for k in range(8):
            m, w = (m_byte >> k) & 1, (w_byte >> k) & 1
            written += w
            outside += w and not m
            reuse += m and not w
    return outside, reuse, written


def naive_gathered_statistics(layers, x, batch):
    """BatchNorm statistics gathered with dropout off, by hand, in float64.

    ``layers``: ``("conv", w)``, ``("linear", w)``, ``("bn", gamma, beta, eps)``, ``("relu",)``,
    ``("dropout",)`` (the identity: off) and ``("flatten",)``. Each batch of ``batch`` rows (a
    last one of a single row left out) runs through them; every BatchNorm normalises with the
    batch's own mean and biased variance and records the mean and the unbiased variance. Returns,
    per BatchNorm, (mean over batches of the means, mean over batches of the variances).
    """
    x = np.asarray(x, np.float64)
    starts = list(range(0, len(x), batch))
    if len(starts) > 1 and len(x) - starts[-1] < 2:
        starts.pop()
    sums = {}
    for s in starts:
        h = x[s : s + batch]
        for i, layer in enumerate(layers):
            kind = layer[0]
            if kind == "conv":
                h = naive_conv2d(h, np.asarray(layer[1], np.float64))
            elif kind == "linear":
                h = h @ np.asarray(layer[1], np.float64).T
            elif kind == "relu":
                h = np.maximum(h, 0.0)
            elif kind == "flatten":
                h = h.reshape(len(h), -1)
            elif kind == "bn":
                axes = (0,) if h.ndim == 2 else (0, 2, 3)
                count = h.size // h.shape[1]
                shape = (1, -1) + (1,) * (h.ndim - 2)
                mean = h.mean(axis=axes)
                var = ((h - mean.reshape(shape)) ** 2).mean(axis=axes)
                m, v = sums.get(i, (0.0, 0.0))
                sums[i] = (m + mean, v + var * count / (count - 1))
                gamma, beta, eps = (np.asarray(a, np.float64) for a in layer[1:4])
                h = ((h - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
                     * gamma.reshape(shape) + beta.reshape(shape))
    return [(m / len(starts), v / len(starts)) for _, (m, v) in sorted(sums.items())]
