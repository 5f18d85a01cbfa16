// All-user top-K over item codes on the CPU, scoring + exclusion + selection fused (ours).
//
// Two XLA FFI handlers, called from hq_jax/retrieval/native.py (which builds every array below on the host
// and documents the layouts and the ranking each handler computes):
//
//   HqTopkInt:   exact integer keys of scalar and layer-wise codes,
//                  key(u, i) = sum_k m_k(u) beta_k(i) P_k(u, i) + shift(i),
//                P_k = dim_k - 2 popcount(xor) for 1-bit layers (packed sign bits) and the int8 dot product
//                (AVX-512 VNNI) of centred codes for 2-8 bit layers; computed in int32, int64 or int128,
//                the narrowest the key's bound allows. The order is (key desc, row asc): exact.
//   HqTopkFloat: float rows (float embeddings, decoded product codes). The score is the "lane sum" of the
//                float32 products (native.py: `lane_sum_scores` is the NumPy definition); every item is
//                first gated by an int8 VNNI inner product whose error against that score is bounded on
//                the host (native.py), so only items that can enter the top K are scored exactly. For
//                product codes the exact score decodes the row from the codebooks.
//
// Both scan each user's items in ascending row order, so "ties to the lower row" is "a later item enters
// only with a strictly better key". Users are split into blocks of kUserBlock; threads take blocks from an
// atomic counter; each block scans the items chunk by chunk (kChunk items), kGroup users at a time, so a
// chunk of codes is read from memory once per block and from cache otherwise.
//
// Built by `make kernel` (-O3 -march=native -ffp-contract=off: no fused multiply-add may change the float
// scores' rounding). Without AVX-512 (F, BW, VNNI, VPOPCNTDQ) the same results come from scalar loops.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VPOPCNTDQ__) && \
    defined(__AVX512DQ__)
#define HQ_AVX512 1
#include <immintrin.h>
#else
#define HQ_AVX512 0
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;      // items per tile (one 512-bit vector of int32)
constexpr int kTiles = 4;       // tiles scored together by the micro-kernels
constexpr int kChunk = 512;     // items per chunk (a multiple of kLanes * kTiles)
constexpr int kGroup = 4;       // users scored together by the micro-kernels
constexpr int kUserBlock = 32;  // users sharing one pass over the items
constexpr int kMaxLayers = 16;

// ---------------------------------------------------------------------------------------------------------
// Raw inner products of kGroup users against one chunk of tiles
// ---------------------------------------------------------------------------------------------------------

// Popcount of xor: items as [tile][word][16 lanes] uint32, users as [word] uint32; out[u][item] = popcount.
template <int U>
void RawPopcount(const uint32_t* items, int ntiles, int words, const uint32_t* const* users, int32_t* const* out) {
#if HQ_AVX512
  for (int t = 0; t < ntiles; t += kTiles) {
    __m512i acc[U][kTiles];
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < kTiles; ++j) acc[u][j] = _mm512_setzero_si512();
    const uint32_t* base = items + static_cast<size_t>(t) * words * kLanes;
    for (int w = 0; w < words; ++w) {
      __m512i a[kTiles];
      for (int j = 0; j < kTiles; ++j)
        a[j] = _mm512_loadu_si512(base + (static_cast<size_t>(j) * words + w) * kLanes);
      for (int u = 0; u < U; ++u) {
        __m512i b = _mm512_set1_epi32(static_cast<int>(users[u][w]));
        for (int j = 0; j < kTiles; ++j)
          acc[u][j] = _mm512_add_epi32(acc[u][j], _mm512_popcnt_epi32(_mm512_xor_si512(a[j], b)));
      }
    }
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < kTiles; ++j) _mm512_storeu_si512(out[u] + (t + j) * kLanes, acc[u][j]);
  }
#else
  for (int t = 0; t < ntiles; ++t)
    for (int u = 0; u < U; ++u)
      for (int l = 0; l < kLanes; ++l) {
        int32_t s = 0;
        for (int w = 0; w < words; ++w)
          s += __builtin_popcount(items[(static_cast<size_t>(t) * words + w) * kLanes + l] ^ users[u][w]);
        out[u][t * kLanes + l] = s;
      }
#endif
}

// int8 dot products: items as [tile][group of 4 dims][16 lanes][4] uint8 (code + 128), users as [group] of 4
// int8 (read as int32 words); out[u][item] = sum_j user_j * (item_j + 128).
template <int U>
void RawDot(const uint8_t* items, int ntiles, int groups, const int32_t* const* users, int32_t* const* out) {
#if HQ_AVX512
  for (int t = 0; t < ntiles; t += kTiles) {
    __m512i acc[U][kTiles];
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < kTiles; ++j) acc[u][j] = _mm512_setzero_si512();
    const uint8_t* base = items + static_cast<size_t>(t) * groups * 64;
    for (int g = 0; g < groups; ++g) {
      __m512i a[kTiles];
      for (int j = 0; j < kTiles; ++j) a[j] = _mm512_loadu_si512(base + (static_cast<size_t>(j) * groups + g) * 64);
      for (int u = 0; u < U; ++u) {
        __m512i b = _mm512_set1_epi32(users[u][g]);
        for (int j = 0; j < kTiles; ++j) acc[u][j] = _mm512_dpbusd_epi32(acc[u][j], a[j], b);
      }
    }
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < kTiles; ++j) _mm512_storeu_si512(out[u] + (t + j) * kLanes, acc[u][j]);
  }
#else
  for (int t = 0; t < ntiles; ++t)
    for (int u = 0; u < U; ++u) {
      const int8_t* ub = reinterpret_cast<const int8_t*>(users[u]);
      for (int l = 0; l < kLanes; ++l) {
        int32_t s = 0;
        for (int g = 0; g < groups; ++g)
          for (int b = 0; b < 4; ++b)
            s += static_cast<int32_t>(ub[4 * g + b]) *
                 static_cast<int32_t>(items[((static_cast<size_t>(t) * groups + g) * kLanes + l) * 4 + b]);
        out[u][t * kLanes + l] = s;
      }
    }
#endif
}

template <template <int> class F, typename... Args>
void ForGroup(int n, Args... args) {
  switch (n) {
    case 1: F<1>::Run(args...); break;
    case 2: F<2>::Run(args...); break;
    case 3: F<3>::Run(args...); break;
    default: F<4>::Run(args...); break;
  }
}
template <int U>
struct PopcountF {
  static void Run(const uint32_t* i, int nt, int w, const uint32_t* const* u, int32_t* const* o) {
    RawPopcount<U>(i, nt, w, u, o);
  }
};
template <int U>
struct DotF {
  static void Run(const uint8_t* i, int nt, int g, const int32_t* const* u, int32_t* const* o) { RawDot<U>(i, nt, g, u, o); }
};

// ---------------------------------------------------------------------------------------------------------
// Selection: a per-user heap of the K best (key desc, row asc), and the gate of the vectorised scan
// ---------------------------------------------------------------------------------------------------------

// The lowest key of each key type (the gate of a user whose heap is not full yet).
template <typename K>
constexpr K Lowest() {
  if constexpr (sizeof(K) == 16)
    return -static_cast<K>((static_cast<unsigned __int128>(1) << 127) - 1) - 1;
  else
    return std::numeric_limits<K>::lowest();
}

template <typename Key>
struct TopK {
  int k = 0, count = 0;
  Key* keys = nullptr;
  int32_t* rows = nullptr;

  // a ranks below b
  static bool Worse(Key ka, int32_t ra, Key kb, int32_t rb) { return ka < kb || (ka == kb && ra > rb); }
  bool Full() const { return count == k; }

  // Callers pass only entries that beat the root when full (rows ascend, so ties never enter).
  void Push(Key key, int32_t row) {
    int i;
    if (count < k) {
      i = count++;
      while (i > 0) {  // sift up: the root is the worst entry
        int p = (i - 1) / 2;
        if (!Worse(key, row, keys[p], rows[p])) break;
        keys[i] = keys[p];
        rows[i] = rows[p];
        i = p;
      }
    } else {
      i = 0;
      for (;;) {  // sift down
        int c = 2 * i + 1;
        if (c >= count) break;
        if (c + 1 < count && Worse(keys[c + 1], rows[c + 1], keys[c], rows[c])) ++c;
        if (!Worse(keys[c], rows[c], key, row)) break;
        keys[i] = keys[c];
        rows[i] = rows[c];
        i = c;
      }
    }
    keys[i] = key;
    rows[i] = row;
  }

  // Best first into out_rows / out_keys (K of them; -1 / -inf past count).
  void Write(int32_t* out_rows, double* out_keys) {
    std::vector<int> order(count);
    for (int i = 0; i < count; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return Worse(keys[b], rows[b], keys[a], rows[a]); });
    for (int i = 0; i < k; ++i) {
      out_rows[i] = i < count ? rows[order[i]] : -1;
      out_keys[i] = i < count ? static_cast<double>(keys[order[i]]) : -std::numeric_limits<double>::infinity();
    }
  }
};

// One user's sorted excluded rows, visited in ascending row order.
struct Exclusions {
  const int32_t* rows = nullptr;
  int64_t pos = 0, end = 0;
  bool Contains(int32_t row) {
    while (pos < end && rows[pos] < row) ++pos;
    return pos < end && rows[pos] == row;
  }
};

// Calls handle(item) for every item in [0, n) of buf whose value exceeds *gate (re-read after each call).
template <typename T, typename H>
inline void Scan(const T* buf, int n, const T* gate, H&& handle) {
#if HQ_AVX512
  if constexpr (sizeof(T) == 16) {  // int128 keys: no vector compare
    for (int i = 0; i < n; ++i)
      if (buf[i] > *gate) handle(i);
    return;
  } else if constexpr (sizeof(T) == 4) {
    for (int i = 0; i < n; i += 16) {
      __mmask16 m = _mm512_cmpgt_epi32_mask(_mm512_loadu_si512(buf + i), _mm512_set1_epi32(*gate));
      while (m) {
        int j = __builtin_ctz(m);
        m &= m - 1;
        if (i + j >= n) return;
        if (buf[i + j] > *gate) handle(i + j);
      }
    }
    return;
  } else {
    for (int i = 0; i < n; i += 8) {
      __mmask8 m = _mm512_cmpgt_epi64_mask(_mm512_loadu_si512(buf + i), _mm512_set1_epi64(*gate));
      while (m) {
        int j = __builtin_ctz(m);
        m &= m - 1;
        if (i + j >= n) return;
        if (buf[i + j] > *gate) handle(i + j);
      }
    }
    return;
  }
#else
  for (int i = 0; i < n; ++i)
    if (buf[i] > *gate) handle(i);
#endif
}

// ---------------------------------------------------------------------------------------------------------
// The driver: user blocks over threads, chunks of items, groups of users
// ---------------------------------------------------------------------------------------------------------

struct Common {
  int64_t num_users, num_items, k;
  const int32_t* excl_indptr;  // (num_users + 1,)
  const int32_t* excl_rows;    // sorted per user
  int32_t* out_rows;           // (num_users, k)
  double* out_keys;
  int threads;
};

// Mode: BufKey (what the micro-kernels + combine write per item), HeapKey, and
//   void Score(int64_t user0, int nusers, int64_t item0, int ntiles, BufKey* const* out, Scratch&)
//   BufKey Gate(int64_t user, TopK<HeapKey>&)      (items pass iff buf > gate)
//   bool Offer(int64_t user, int64_t row, BufKey value, TopK<HeapKey>&, Scratch&)   (exact check + push)
template <typename Mode>
void Run(const Mode& mode, const Common& c) {
  using BufKey = typename Mode::BufKey;
  using HeapKey = typename Mode::HeapKey;
  const int64_t nblocks = (c.num_users + kUserBlock - 1) / kUserBlock;
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    std::vector<HeapKey> hkeys(static_cast<size_t>(kUserBlock) * c.k);
    std::vector<int32_t> hrows(static_cast<size_t>(kUserBlock) * c.k);
    std::vector<BufKey> buf(static_cast<size_t>(kGroup) * kChunk + 64);
    typename Mode::Scratch scratch(mode);
    TopK<HeapKey> heaps[kUserBlock];
    Exclusions excl[kUserBlock];
    BufKey gates[kUserBlock];
    for (int64_t blk; (blk = next.fetch_add(1)) < nblocks;) {
      const int64_t u0 = blk * kUserBlock;
      const int nu = static_cast<int>(std::min<int64_t>(kUserBlock, c.num_users - u0));
      for (int u = 0; u < nu; ++u) {
        heaps[u] = TopK<HeapKey>{static_cast<int>(c.k), 0, hkeys.data() + u * c.k, hrows.data() + u * c.k};
        excl[u] = Exclusions{c.excl_rows, c.excl_indptr[u0 + u], c.excl_indptr[u0 + u + 1]};
        gates[u] = mode.Gate(u0 + u, heaps[u]);
      }
      for (int64_t i0 = 0; i0 < c.num_items; i0 += kChunk) {
        const int nvalid = static_cast<int>(std::min<int64_t>(kChunk, c.num_items - i0));
        const int ntiles = (nvalid + kLanes * kTiles - 1) / (kLanes * kTiles) * kTiles;
        for (int g0 = 0; g0 < nu; g0 += kGroup) {
          const int gu = std::min(kGroup, nu - g0);
          BufKey* outs[kGroup];
          for (int u = 0; u < kGroup; ++u) outs[u] = buf.data() + static_cast<size_t>(u) * kChunk;
          mode.Score(u0 + g0, gu, i0, ntiles, outs, scratch);
          for (int u = 0; u < gu; ++u) {
            const int uu = g0 + u;
            const int64_t user = u0 + uu;
            Scan(outs[u], nvalid, &gates[uu], [&](int j) {
              const int32_t row = static_cast<int32_t>(i0 + j);
              if (excl[uu].Contains(row)) return;
              if (mode.Offer(user, row, outs[u][j], heaps[uu], scratch)) gates[uu] = mode.Gate(user, heaps[uu]);
            });
          }
        }
      }
      for (int u = 0; u < nu; ++u) heaps[u].Write(c.out_rows + (u0 + u) * c.k, c.out_keys + (u0 + u) * c.k);
    }
  };
  const int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(c.threads, nblocks)));
  std::vector<std::thread> pool;
  for (int t = 1; t < nthreads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

// ---------------------------------------------------------------------------------------------------------
// Integer keys
// ---------------------------------------------------------------------------------------------------------

struct IntLayer {
  int64_t kind;       // 0: 1-bit popcount layer, 1: int8 dot layer
  int64_t dim;        // popcount: P = dim - 2 * popcount
  int64_t width;      // popcount: uint32 words per item; dot: groups of 4 dims
  int64_t item_off;   // byte offset of the layer's tiles in item_codes
  int64_t user_off;   // byte offset of the layer's words in a user's row of user_codes
  int64_t beta_off;   // element offset of beta_k in item_terms (-1: none)
};

template <typename K>
struct IntMode {
  using BufKey = K;
  using HeapKey = K;
  struct Scratch {
    std::vector<int32_t> raw;
    explicit Scratch(const IntMode&) : raw(static_cast<size_t>(kGroup) * kChunk) {}
  };
  int num_layers;
  IntLayer layers[kMaxLayers];
  const uint8_t* item_codes;
  const int64_t* item_terms;
  int64_t shift_off;  // -1: none
  const uint8_t* user_codes;
  int64_t user_row_bytes;
  const int64_t* user_terms;  // (num_users, 2 * num_layers): multiplier m_k(u), dot correction c_k(u)

  void Score(int64_t user0, int nu, int64_t i0, int ntiles, K* const* out, Scratch& s) const {
    int32_t* raws[kGroup];
    for (int u = 0; u < kGroup; ++u) raws[u] = s.raw.data() + static_cast<size_t>(u) * kChunk;
    const int n = ntiles * kLanes;
    for (int l = 0; l < num_layers; ++l) {
      const IntLayer& L = layers[l];
      if (L.kind == 0) {
        const uint32_t* users[kGroup];
        for (int u = 0; u < nu; ++u)
          users[u] = reinterpret_cast<const uint32_t*>(user_codes + (user0 + u) * user_row_bytes + L.user_off);
        const uint32_t* items = reinterpret_cast<const uint32_t*>(item_codes + L.item_off) + i0 * L.width;
        ForGroup<PopcountF>(nu, items, ntiles, static_cast<int>(L.width), static_cast<const uint32_t* const*>(users),
                            static_cast<int32_t* const*>(raws));
      } else {
        const int32_t* users[kGroup];
        for (int u = 0; u < nu; ++u)
          users[u] = reinterpret_cast<const int32_t*>(user_codes + (user0 + u) * user_row_bytes + L.user_off);
        const uint8_t* items = item_codes + L.item_off + i0 * L.width * 4;
        ForGroup<DotF>(nu, items, ntiles, static_cast<int>(L.width), static_cast<const int32_t* const*>(users),
                       static_cast<int32_t* const*>(raws));
      }
      const int64_t* beta = L.beta_off >= 0 ? item_terms + L.beta_off + i0 : nullptr;
      for (int u = 0; u < nu; ++u) {
        const int64_t* ut = user_terms + (user0 + u) * 2 * num_layers + 2 * l;
        const K mult = static_cast<K>(ut[0]);
        const int32_t* r = raws[u];
        K* o = out[u];
        // P = dim - 2 h (popcount) or dot - c(u) (the +128 of the item codes): a = -2 or 1, b = dim or -c(u)
        const int32_t a = L.kind == 0 ? -2 : 1;
        const K b = static_cast<K>(L.kind == 0 ? L.dim : -ut[1]);
        if (beta) {
          if (l == 0)
            for (int i = 0; i < n; ++i) o[i] = (static_cast<K>(a * r[i]) + b) * static_cast<K>(beta[i]) * mult;
          else
            for (int i = 0; i < n; ++i) o[i] += (static_cast<K>(a * r[i]) + b) * static_cast<K>(beta[i]) * mult;
        } else if (mult != 1) {
          if (l == 0)
            for (int i = 0; i < n; ++i) o[i] = (static_cast<K>(a * r[i]) + b) * mult;
          else
            for (int i = 0; i < n; ++i) o[i] += (static_cast<K>(a * r[i]) + b) * mult;
        } else {
          if (l == 0)
            for (int i = 0; i < n; ++i) o[i] = static_cast<K>(a * r[i]) + b;
          else
            for (int i = 0; i < n; ++i) o[i] += static_cast<K>(a * r[i]) + b;
        }
      }
    }
    if (shift_off >= 0) {
      const int64_t* sh = item_terms + shift_off + i0;
      for (int u = 0; u < nu; ++u)
        for (int i = 0; i < n; ++i) out[u][i] += static_cast<K>(sh[i]);
    }
  }

  K Gate(int64_t, TopK<K>& h) const { return h.Full() ? h.keys[0] : Lowest<K>(); }

  bool Offer(int64_t, int64_t row, K key, TopK<K>& h, Scratch&) const {
    if (h.Full() && !(key > h.keys[0])) return false;
    h.Push(key, static_cast<int32_t>(row));
    return true;
  }
};

// ---------------------------------------------------------------------------------------------------------
// Float rows (float embeddings, decoded product codes): int8 gate, exact lane-sum score
// ---------------------------------------------------------------------------------------------------------

// The lane sum of float32 products over dpad (a multiple of 16) dims: lane l sums the products of dims
// l, l + 16, ... in order; then lanes l and l + h are added for h = 8, 4, 2, 1. `x` holds `d` floats (the rest
// are zeros); `u` holds dpad (zero-padded).
inline float LaneSum(const float* u, const float* x, int d, int dpad) {
  float lanes[16];
#if HQ_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (int b = 0; b < dpad; b += 16) {
    const int rem = d - b;
    const __mmask16 m = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << std::max(rem, 0)) - 1);
    __m512 p = _mm512_mul_ps(_mm512_loadu_ps(u + b), _mm512_maskz_loadu_ps(m, x + b));
    acc = b == 0 ? p : _mm512_add_ps(acc, p);
  }
  _mm512_storeu_ps(lanes, acc);
#else
  for (int l = 0; l < 16; ++l) {
    float acc = 0.0f;
    for (int b = 0; b < dpad; b += 16) {
      const float xv = b + l < d ? x[b + l] : 0.0f;
      const float p = u[b + l] * xv;
      acc = b == 0 ? p : acc + p;
    }
    lanes[l] = acc;
  }
#endif
  for (int h = 8; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) lanes[l] = lanes[l] + lanes[l + h];
  return lanes[0];
}

struct FloatMode {
  using BufKey = int32_t;
  using HeapKey = float;
  struct Scratch {
    std::vector<float> row;
    explicit Scratch(const FloatMode& m) : row(static_cast<size_t>(m.dpad), 0.0f) {}
  };
  int64_t d, dpad, groups;
  const uint8_t* item_codes;   // int8 gate tiles, codes + 128
  const float* item_float;     // float rows (num_items, d), or codebooks (M, ncode, sub)
  const uint8_t* pq_codes;     // (num_items, M) or null
  int64_t pq_m, pq_ncode, pq_sub;
  const int8_t* user_codes;    // (num_users, 4 * groups)
  const float* user_float;     // (num_users, dpad)
  const double* user_consts;   // (num_users, 3): s_u * s_x, E_u, 128 * sum(user codes)

  void Score(int64_t user0, int nu, int64_t i0, int ntiles, int32_t* const* out, Scratch&) const {
    const int32_t* users[kGroup];
    for (int u = 0; u < nu; ++u) users[u] = reinterpret_cast<const int32_t*>(user_codes + (user0 + u) * 4 * groups);
    ForGroup<DotF>(nu, item_codes + i0 * groups * 4, ntiles, static_cast<int>(groups),
                   static_cast<const int32_t* const*>(users), out);
  }

  // Items pass iff dot > gate: dot - c(u) >= floor((threshold - E_u) / (s_u s_x)) (native.py: the bound).
  int32_t Gate(int64_t user, TopK<float>& h) const {
    constexpr int32_t kLow = std::numeric_limits<int32_t>::min();
    if (!h.Full()) return kLow;
    const double* c = user_consts + user * 3;
    const double t = std::floor((static_cast<double>(h.keys[0]) - c[1]) / c[0]) + c[2] - 1.0;
    if (!(t > -2.0e9)) return kLow;  // also NaN
    if (t > 2.0e9) return 2000000000;
    return static_cast<int32_t>(t);
  }

  float Exact(int64_t user, int64_t row, Scratch& s) const {
    const float* u = user_float + user * dpad;
    if (pq_codes == nullptr) return LaneSum(u, item_float + row * d, static_cast<int>(d), static_cast<int>(dpad));
    const uint8_t* codes = pq_codes + row * pq_m;
    for (int64_t m = 0; m < pq_m; ++m)
      std::memcpy(s.row.data() + m * pq_sub, item_float + (m * pq_ncode + codes[m]) * pq_sub, pq_sub * sizeof(float));
    return LaneSum(u, s.row.data(), static_cast<int>(d), static_cast<int>(dpad));
  }

  bool Offer(int64_t user, int64_t row, int32_t, TopK<float>& h, Scratch& s) const {
    const float score = Exact(user, row, s);
    if (h.Full() && !(score > h.keys[0])) return false;
    h.Push(score, static_cast<int32_t>(row));
    return true;
  }
};

// ---------------------------------------------------------------------------------------------------------
// FFI handlers
// ---------------------------------------------------------------------------------------------------------

// 64-bit arrays travel as raw bytes (JAX without x64 has no int64 / float64 arrays): the Python side passes
// int32 views of them; these read them back after checking their byte sizes.
template <typename T>
const T* Wide(ffi::AnyBuffer b, int64_t count, bool* ok) {
  if (static_cast<int64_t>(b.size_bytes()) != count * static_cast<int64_t>(sizeof(T))) *ok = false;
  return static_cast<const T*>(b.untyped_data());
}

int64_t Rows(ffi::AnyBuffer b) { return b.dimensions().size() == 0 ? 0 : b.dimensions()[0]; }

ffi::Error CheckCommon(ffi::AnyBuffer excl_indptr, ffi::AnyBuffer excl_rows, int64_t num_users, int64_t k,
                       ffi::Result<ffi::AnyBuffer>& rows, ffi::Result<ffi::AnyBuffer>& keys) {
  if (k < 1) return ffi::Error::InvalidArgument("hq_topk: k must be positive");
  if (excl_indptr.element_type() != ffi::S32 || static_cast<int64_t>(excl_indptr.element_count()) != num_users + 1)
    return ffi::Error::InvalidArgument("hq_topk: exclusion indptr must be int32 (num_users + 1,)");
  if (excl_rows.element_type() != ffi::S32) return ffi::Error::InvalidArgument("hq_topk: excluded rows must be int32");
  if (rows->element_type() != ffi::S32 || static_cast<int64_t>(rows->element_count()) != num_users * k ||
      static_cast<int64_t>(keys->size_bytes()) != num_users * k * 8)
    return ffi::Error::InvalidArgument("hq_topk: results must be int32 (num_users, k) and 8-byte keys");
  return ffi::Error::Success();
}

// meta: [num_items, n_pad, num_layers, key bits (32, 64, 128), shift_off, user_row_bytes, then per layer: kind, dim, width,
// item_off, user_off, beta_off]. item_terms: int64 bytes; user_terms: int64 bytes (num_users, 2 layers).
ffi::Error TopkIntImpl(ffi::AnyBuffer item_codes, ffi::AnyBuffer item_terms, ffi::AnyBuffer user_codes,
                       ffi::AnyBuffer user_terms, ffi::AnyBuffer excl_indptr, ffi::AnyBuffer excl_rows,
                       ffi::Result<ffi::AnyBuffer> rows, ffi::Result<ffi::AnyBuffer> keys,
                       ffi::Span<const int64_t> meta, int64_t k, int64_t threads) {
  if (meta.size() < 6) return ffi::Error::InvalidArgument("hq_topk_int: bad meta");
  const int64_t* m = meta.begin();
  const int64_t num_layers = m[2];
  if (num_layers < 1 || num_layers > kMaxLayers || static_cast<int64_t>(meta.size()) != 6 + 6 * num_layers)
    return ffi::Error::InvalidArgument("hq_topk_int: bad layer count");
  const int64_t num_users = Rows(user_codes);
  if (auto e = CheckCommon(excl_indptr, excl_rows, num_users, k, rows, keys); e.failure()) return e;
  bool ok = static_cast<int64_t>(user_codes.size_bytes()) == num_users * m[5] && item_terms.size_bytes() % 8 == 0;
  const int64_t* uterms = Wide<int64_t>(user_terms, num_users * 2 * num_layers, &ok);
  if (!ok) return ffi::Error::InvalidArgument("hq_topk_int: user arrays do not match meta");
  Common c{num_users, m[0], k, excl_indptr.typed_data<int32_t>(), excl_rows.typed_data<int32_t>(),
           rows->typed_data<int32_t>(), static_cast<double*>(keys->untyped_data()), static_cast<int>(threads)};
  auto fill = [&](auto& mode) {
    mode.num_layers = static_cast<int>(num_layers);
    for (int l = 0; l < num_layers; ++l) {
      const int64_t* p = m + 6 + 6 * l;
      mode.layers[l] = IntLayer{p[0], p[1], p[2], p[3], p[4], p[5]};
    }
    mode.item_codes = static_cast<const uint8_t*>(item_codes.untyped_data());
    mode.item_terms = static_cast<const int64_t*>(item_terms.untyped_data());
    mode.shift_off = m[4];
    mode.user_codes = static_cast<const uint8_t*>(user_codes.untyped_data());
    mode.user_row_bytes = m[5];
    mode.user_terms = uterms;
  };
  if (m[3] == 32) {
    IntMode<int32_t> mode;
    fill(mode);
    Run(mode, c);
  } else if (m[3] == 64) {
    IntMode<int64_t> mode;
    fill(mode);
    Run(mode, c);
  } else if (m[3] == 128) {
    IntMode<__int128> mode;
    fill(mode);
    Run(mode, c);
  } else {
    return ffi::Error::InvalidArgument("hq_topk_int: key bits must be 32, 64 or 128");
  }
  return ffi::Error::Success();
}

// meta: [num_items, n_pad, d, dpad, groups, pq_m, pq_ncode, pq_sub] (pq_m = 0: float rows). user_consts: float64
// bytes (num_users, 3).
ffi::Error TopkFloatImpl(ffi::AnyBuffer item_codes, ffi::AnyBuffer item_float, ffi::AnyBuffer pq_codes,
                         ffi::AnyBuffer user_codes, ffi::AnyBuffer user_float, ffi::AnyBuffer user_consts,
                         ffi::AnyBuffer excl_indptr, ffi::AnyBuffer excl_rows, ffi::Result<ffi::AnyBuffer> rows,
                         ffi::Result<ffi::AnyBuffer> keys, ffi::Span<const int64_t> meta, int64_t k,
                         int64_t threads) {
  if (meta.size() != 8) return ffi::Error::InvalidArgument("hq_topk_float: bad meta");
  const int64_t* m = meta.begin();
  const int64_t num_users = Rows(user_codes);
  if (auto e = CheckCommon(excl_indptr, excl_rows, num_users, k, rows, keys); e.failure()) return e;
  bool ok = user_float.element_type() == ffi::F32 &&
            static_cast<int64_t>(user_float.element_count()) == num_users * m[3] &&
            static_cast<int64_t>(user_codes.size_bytes()) == num_users * 4 * m[4] &&
            item_float.element_type() == ffi::F32 && static_cast<int64_t>(item_codes.size_bytes()) == m[1] * 4 * m[4];
  const double* uconsts = Wide<double>(user_consts, num_users * 3, &ok);
  if (m[5] > 0)
    ok = ok && static_cast<int64_t>(pq_codes.size_bytes()) == m[0] * m[5] && m[5] * m[7] == m[2] &&
         static_cast<int64_t>(item_float.element_count()) == m[5] * m[6] * m[7];
  else
    ok = ok && static_cast<int64_t>(item_float.element_count()) == m[0] * m[2];
  if (!ok) return ffi::Error::InvalidArgument("hq_topk_float: arrays do not match meta");
  Common c{num_users, m[0], k, excl_indptr.typed_data<int32_t>(), excl_rows.typed_data<int32_t>(),
           rows->typed_data<int32_t>(), static_cast<double*>(keys->untyped_data()), static_cast<int>(threads)};
  FloatMode mode{m[2], m[3], m[4], static_cast<const uint8_t*>(item_codes.untyped_data()),
                 item_float.typed_data<float>(),
                 m[5] > 0 ? static_cast<const uint8_t*>(pq_codes.untyped_data()) : nullptr, m[5], m[6], m[7],
                 static_cast<const int8_t*>(user_codes.untyped_data()), user_float.typed_data<float>(), uconsts};
  Run(mode, c);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HqTopkInt, TopkIntImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("meta")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HqTopkFloat, TopkFloatImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("meta")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("threads"));

// The instruction sets this build needs (the loader checks them against the CPU before registering).
extern "C" const char* HqTopkCpuFeatures() {
#if HQ_AVX512
  return "avx512f avx512bw avx512dq avx512_vnni avx512_vpopcntdq";
#else
  return "";
#endif
}

// Bumped whenever an array layout or the meta changes (native.py checks it).
extern "C" int HqTopkAbiVersion() { return 2; }

// ---------------------------------------------------------------------------------------------------------
// Peak-rate probes for the benchmark's ceilings (experiments/bench_retrieval.py): register-only loops of the
// instruction each method's arithmetic runs on, `threads` threads, `iters` iterations each; returns the
// operations per second over all threads (0 when the unit has no vector form in this build).
//   unit 0: float32 multiply-adds (vfmadd231ps, 16 per instruction)
//   unit 1: int8 multiply-adds (vpdpbusd, 64 per instruction)
//   unit 2: 32-bit words XOR-ed and popcounted (vpxord + vpopcntd + vpaddd, 16 per triple)
//   unit 3: float table lookups with byte indices from L1, summed (scalar: IndexPQ's inner loop)
//   unit 4: 4-bit in-register table lookups (vpshufb, 64 per instruction: the fast-scan inner loop)
// ---------------------------------------------------------------------------------------------------------

namespace {

constexpr int kChains = 12;

__attribute__((optimize("no-tree-vectorize"))) double ProbeThread(int unit, int64_t iters) {
  double sink = 0.0;
#if HQ_AVX512
  if (unit == 0) {
    __m512 acc[kChains];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(static_cast<float>(c));
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    for (int c = 0; c < kChains; ++c) sink += _mm512_reduce_add_ps(acc[c]);
    return sink * 0 + static_cast<double>(iters) * kChains * 16;
  }
  if (unit == 1) {
    __m512i acc[kChains];
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_epi32(c);
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
    for (int c = 0; c < kChains; ++c) sink += _mm512_reduce_add_epi32(acc[c]);
    return sink * 0 + static_cast<double>(iters) * kChains * 64;
  }
  if (unit == 2) {
    __m512i acc[kChains];
    const __m512i k = _mm512_set1_epi32(0x5a5a5a5a);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_epi32(c);
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_add_epi32(acc[c], _mm512_popcnt_epi32(_mm512_xor_si512(acc[c], k)));
    for (int c = 0; c < kChains; ++c) sink += _mm512_reduce_add_epi32(acc[c]);
    return sink * 0 + static_cast<double>(iters) * kChains * 16;
  }
  if (unit == 4) {
    __m512i acc[kChains];
    const __m512i table = _mm512_set1_epi64(0x0706050403020100LL), low = _mm512_set1_epi8(0x0f);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_epi8(static_cast<char>(c));
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c)
        acc[c] = _mm512_add_epi8(acc[c], _mm512_shuffle_epi8(table, _mm512_and_si512(acc[c], low)));
    for (int c = 0; c < kChains; ++c) sink += _mm512_reduce_add_epi32(acc[c]);
    return sink * 0 + static_cast<double>(iters) * kChains * 64;
  }
#endif
  if (unit == 3) {
    float table[8][256];
    uint8_t codes[4096];
    uint32_t state = 12345;
    for (int m = 0; m < 8; ++m)
      for (int j = 0; j < 256; ++j) table[m][j] = static_cast<float>((m * 256 + j) % 97) * 0.01f;
    for (int j = 0; j < 4096; ++j) codes[j] = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
    float acc[4] = {0, 0, 0, 0};
    const int64_t rows = iters / 8;
    for (int64_t i = 0; i < rows; ++i) {
      const uint8_t* c = codes + (i * 8) % 4096;
      acc[i & 3] += table[0][c[0]] + table[1][c[1]] + table[2][c[2]] + table[3][c[3]] + table[4][c[4]] +
                    table[5][c[5]] + table[6][c[6]] + table[7][c[7]];
    }
    sink = acc[0] + acc[1] + acc[2] + acc[3];
    volatile double keep = sink;
    (void)keep;
    return static_cast<double>(rows) * 8;
  }
  return 0.0;
}

}  // namespace

extern "C" double HqPeakOps(int unit, int threads, int64_t iters) {
  std::vector<double> ops(threads > 0 ? threads : 1, 0.0);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 1; t < static_cast<int>(ops.size()); ++t) pool.emplace_back([&, t] { ops[t] = ProbeThread(unit, iters); });
  ops[0] = ProbeThread(unit, iters);
  for (auto& t : pool) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double total = 0.0;
  for (double o : ops) total += o;
  return seconds > 0 ? total / seconds : 0.0;
}
