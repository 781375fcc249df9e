#include "format/pickle/unpickler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "format/pickle/internal.h"
#include "util/checked_math.h"
#include "util/coding.h"
#include "util/strings.h"

namespace ckpt::pickle {

std::string_view OpcodeName(uint8_t op) {
  switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "UNKNOWN";
  }
}

namespace internal_pickle {

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool Latin1FromUtf8(std::string_view s, std::string* out) {
  out->clear();
  out->reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++i;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      unsigned char c2 = static_cast<unsigned char>(s[i + 1]);
      if ((c2 & 0xC0) != 0x80) return false;
      uint32_t cp = ((c & 0x1F) << 6) | (c2 & 0x3F);
      if (cp < 0x80 || cp > 0xFF) return false;
      out->push_back(static_cast<char>(cp));
      i += 2;
    } else {
      return false;
    }
  }
  return true;
}

std::string Utf8FromLatin1(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  for (unsigned char c : s) AppendUtf8(&out, c);
  return out;
}

// Two's complement little-endian bytes of the decimal `digits` (optional sign),
// minimal as CPython's encode_long writes them. False if not a number.
bool DecimalToTwosComplement(std::string_view text, std::string* out) {
  bool neg = false;
  size_t i = 0;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) {
    neg = text[i] == '-';
    ++i;
  }
  if (i == text.size()) return false;
  std::vector<uint8_t> mag;  // little-endian magnitude
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (c == '_') continue;
    if (c < '0' || c > '9') return false;
    uint32_t carry = static_cast<uint32_t>(c - '0');
    for (uint8_t& b : mag) {
      uint32_t v = static_cast<uint32_t>(b) * 10 + carry;
      b = static_cast<uint8_t>(v & 0xFF);
      carry = v >> 8;
    }
    while (carry) {
      mag.push_back(static_cast<uint8_t>(carry & 0xFF));
      carry >>= 8;
    }
  }
  while (!mag.empty() && mag.back() == 0) mag.pop_back();
  if (mag.empty()) {
    out->clear();
    return true;
  }
  // nbytes = bit_length/8 + 1, as encode_long: room for the sign bit.
  if (mag.back() & 0x80) mag.push_back(0);
  if (neg) {
    uint32_t carry = 1;
    for (uint8_t& b : mag) {
      uint32_t v = static_cast<uint32_t>(static_cast<uint8_t>(~b)) + carry;
      b = static_cast<uint8_t>(v & 0xFF);
      carry = v >> 8;
    }
    if (mag.size() > 1 && mag.back() == 0xFF && (mag[mag.size() - 2] & 0x80)) mag.pop_back();
  }
  out->assign(reinterpret_cast<const char*>(mag.data()), mag.size());
  return true;
}

bool TwosComplementToInt64(std::string_view bytes, int64_t* out) {
  size_t n = bytes.size();
  if (n == 0) {
    *out = 0;
    return true;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  bool neg = (p[n - 1] & 0x80) != 0;
  if (n > 8) {
    for (size_t k = 8; k < n; ++k) {
      if (p[k] != (neg ? 0xFF : 0x00)) return false;
    }
    if (((p[7] & 0x80) != 0) != neg) return false;
    n = 8;
  }
  uint64_t v = neg ? ~uint64_t{0} : 0;
  for (size_t k = 0; k < n; ++k) {
    v &= ~(uint64_t{0xFF} << (8 * k));
    v |= uint64_t{p[k]} << (8 * k);
  }
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace internal_pickle

namespace {

using internal_pickle::AppendUtf8;

constexpr size_t kBufferSize = 1 << 18;

// Sentinel for "the stream ended"; turned into the DataLoss message by the VM.
struct Eof {};

// Sequential reader over a ByteSource: direct pointers when the source is
// resident (Data() != nullptr), else a kBufferSize buffer; big payloads are
// read straight into their destination. Take's fast path is one comparison:
// [win_start_, win_end_) is what win_ holds (the whole source when resident).
class Reader {
 public:
  Reader(const ByteSource& src, uint64_t offset)
      : src_(src), size_(src.Size()), pos_(offset), data_(src.Data()) {
    if (data_ != nullptr) {
      win_ = data_;
      win_end_ = size_;
    }
  }
  Reader(const Reader& other) : Reader(other.src_, other.pos_) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return pos_ <= size_ ? size_ - pos_ : 0; }

  // Sets *p to n contiguous bytes. n must be small (<= kBufferSize).
  // Returns false at end of stream; errors from the source in *st.
  [[gnu::always_inline]] bool Take(size_t n, const char** p, Status* st) {
    if (pos_ + n <= win_end_) [[likely]] {  // pos_ never moves below win_start_
      *p = win_ + (pos_ - win_start_);
      pos_ += n;
      return true;
    }
    return TakeSlow(n, p, st);
  }

  // The bytes buffered from pos(), [*p, *end); empty when none are. Advance
  // consumes n of them.
  void Buffered(const uint8_t** p, const uint8_t** end) const {
    if (pos_ >= win_end_) {
      *p = *end = nullptr;
      return;
    }
    const auto* w = reinterpret_cast<const uint8_t*>(win_);
    *p = w + (pos_ - win_start_);
    *end = w + (win_end_ - win_start_);
  }
  void Advance(size_t n) { pos_ += n; }

  // Consumes the next byte when it is `b` (and is buffered already).
  bool TakeIf(uint8_t b) {
    if (pos_ < win_end_ && static_cast<uint8_t>(win_[pos_ - win_start_]) == b) [[likely]] {
      ++pos_;
      return true;
    }
    return false;
  }

  // Steps over n bytes; false when fewer are left.
  bool Skip(uint64_t n) {
    if (n > remaining()) return false;
    pos_ += n;
    return true;
  }

  // n bytes in place when the source is resident (advancing), else nullptr.
  // REQUIRES: n <= remaining().
  const char* TakeView(size_t n) {
    if (data_ == nullptr) return nullptr;
    const char* p = data_ + pos_;
    pos_ += n;
    return p;
  }

  // Appends n bytes to *out. REQUIRES: n <= remaining().
  Status TakeInto(size_t n, std::string* out) {
    size_t old = out->size();
    out->resize(old + n);
    char* dst = out->data() + old;
    if (data_ != nullptr) {
      std::memcpy(dst, data_ + pos_, n);
      pos_ += n;
      return OkStatus();
    }
    // Serve what the buffer holds, read the rest directly.
    if (pos_ >= win_start_ && pos_ < win_end_) {
      size_t have = static_cast<size_t>(std::min<uint64_t>(n, win_end_ - pos_));
      std::memcpy(dst, win_ + (pos_ - win_start_), have);
      dst += have;
      n -= have;
      pos_ += have;
    }
    if (n > 0) {
      CKPT_RETURN_IF_ERROR(src_.ReadAt(pos_, n, dst));
      pos_ += n;
    }
    return OkStatus();
  }

  // Refills the buffer from pos_ (buffered sources only).
  [[gnu::noinline]] bool TakeSlow(size_t n, const char** p, Status* st) {
    if (n > remaining() || data_ != nullptr) return false;
    size_t want = static_cast<size_t>(std::min<uint64_t>(kBufferSize, remaining()));
    buf_.resize(want);
    *st = src_.ReadAt(pos_, want, buf_.data());
    if (!st->ok()) {
      win_end_ = 0;
      return false;
    }
    win_ = buf_.data();
    win_start_ = pos_;
    win_end_ = pos_ + want;
    *p = win_;
    pos_ += n;
    return true;
  }

  // Reads up to '\n' (consumed, not returned). False at end of stream or if
  // the line exceeds kMaxLineBytes (then *too_long is set).
  bool Line(std::string* line, bool* too_long, Status* st) {
    line->clear();
    *too_long = false;
    for (;;) {
      const char* p;
      if (!Take(1, &p, st)) return false;
      if (*p == '\n') return true;
      if (line->size() >= kMaxLineBytes) {
        *too_long = true;
        return false;
      }
      line->push_back(*p);
    }
  }

 private:
  const ByteSource& src_;
  uint64_t size_;
  uint64_t pos_;
  const char* data_;
  std::string buf_;
  const char* win_ = nullptr;
  uint64_t win_start_ = 0;
  uint64_t win_end_ = 0;
};

// A set of memo keys: a bitmap while keys come about in order (the pickler
// numbers them from 0), a hash set for a far key (LONG_BINGET 60000000 in a
// short stream), which would otherwise cost a bitmap of that size. A key is
// in one of the two: growing the bitmap moves the set's keys it now covers.
class KeySet {
 public:
  // Adds `idx`; true when it was not there yet.
  bool Insert(uint64_t idx) {
    if (idx >= bits_ && idx < kDenseKeys && idx <= bits_ * 2 + 1024) Grow(idx);
    if (idx < bits_) {
      uint64_t& w = words_[idx >> 6];
      const uint64_t bit = uint64_t{1} << (idx & 63);
      if (w & bit) return false;
      w |= bit;
    } else if (!sparse_.insert(idx).second) {
      return false;
    }
    ++size_;
    return true;
  }
  bool Contains(uint64_t idx) const {
    return idx < bits_ ? ((words_[idx >> 6] >> (idx & 63)) & 1) != 0 : sparse_.count(idx) != 0;
  }
  size_t size() const { return size_; }
  size_t sparse_size() const { return sparse_.size(); }
  void Clear() {
    words_ = {};
    bits_ = 0;
    sparse_ = {};
    size_ = 0;
  }

 private:
  static constexpr uint64_t kDenseKeys = uint64_t{1} << 26;

  void Grow(uint64_t idx) {
    bits_ = (std::max<uint64_t>(idx + 1, bits_ * 2) + 63) & ~uint64_t{63};
    words_.resize(bits_ / 64, 0);
    for (auto it = sparse_.begin(); it != sparse_.end();) {
      if (*it < bits_) {
        words_[*it >> 6] |= uint64_t{1} << (*it & 63);
        it = sparse_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::vector<uint64_t> words_;  // the dense range [0, bits_), a bit per key
  uint64_t bits_ = 0;
  std::unordered_set<uint64_t> sparse_;
  size_t size_ = 0;
};

// How MemoReads' ScanBuffered steps over an opcode: its operand's size (0,
// 1, 2, 4, 8), a GET with a 1- or 4-byte key, a payload with a 1- or 4-byte
// (unsigned) length, or kScanSlow: ScanOps' switch decides (text lines,
// signed and 8-byte lengths, STOP, invalid opcodes).
enum : uint8_t { kScanGet1 = 16, kScanGet4, kScanLen1, kScanLen4, kScanSlow };
constexpr std::array<uint8_t, 256> MakeScanSteps() {
  std::array<uint8_t, 256> t{};
  t.fill(kScanSlow);
  for (int op : std::initializer_list<int>{'(', '0', '1', '2', 'N', 0x88, 0x89, 'Q', 'R', 0x81, 0x92, 'a', 'e',
                                           0x90, 'b', 0x93, 'o', 'd', '}', ']', 0x8f, ')', 'l', 't', 0x91, 0x85,
                                           0x86, 0x87, 0x94, 's', 'u'}) {
    t[op] = 0;
  }
  t['K'] = t['q'] = t[0x80] = 1;
  t['M'] = 2;
  t['J'] = t['r'] = 4;
  t['G'] = t[0x95] = 8;
  t['h'] = kScanGet1;
  t['j'] = kScanGet4;
  t[0x8a] = t['U'] = t['C'] = t[0x8c] = kScanLen1;
  t['X'] = t['B'] = kScanLen4;
  return t;
}
constexpr std::array<uint8_t, 256> kScanSteps = MakeScanSteps();

// The memo keys a pickle reads back (GET, BINGET, LONG_BINGET), found by
// stepping over its opcodes once before running it. Python's pickler
// memoizes nearly every object it writes, so a `.metadata` of a million
// chunks puts ~16 million memo entries and reads back a few hundred (class
// names, repeated strings): the VM keeps only the entries a later GET reads.
// The scan steps over operands exactly as the VM reads them (the same
// lengths and lines), so both see the same opcodes up to the STOP. When it
// cannot tell (a source that is not resident, an opcode it cannot step
// over, more than kMaxSparse keys past the dense range), every key is wanted.
class MemoReads {
 public:
  [[gnu::always_inline]] bool Wanted(uint64_t idx) const { return all_ || keys_.Contains(idx); }
  bool all() const { return all_; }
  size_t count() const { return keys_.size(); }

  // Scans the pickle `r` is at, up to its STOP.
  void Scan(Reader r) {
    all_ = !ScanOps(&r);
    if (all_) keys_.Clear();
  }

 private:
  static constexpr size_t kMaxSparse = size_t{1} << 16;

  bool Add(uint64_t idx) {
    keys_.Insert(idx);
    return keys_.sparse_size() <= kMaxSparse;
  }

  // Steps over the opcodes whose operands are buffered whole, as ScanOps'
  // switch would, up to the first one it must decide. False when Add fails.
  bool ScanBuffered(Reader* r) {
    const uint8_t *p, *end;
    r->Buffered(&p, &end);
    const uint8_t* const start = p;
    while (end - p >= 9) {  // an opcode and any fixed operand
      const uint8_t step = kScanSteps[*p];
      if (step <= 8) {
        p += 1 + step;
      } else if (step == kScanGet1) {
        if (!Add(p[1])) return false;
        p += 2;
      } else if (step == kScanGet4) {
        if (!Add(DecodeLE<uint32_t>(reinterpret_cast<const char*>(p + 1)))) return false;
        p += 5;
      } else if (step == kScanLen1 && p[1] <= end - p - 2) {
        p += 2 + p[1];
      } else if (step == kScanLen4 && DecodeLE<uint32_t>(reinterpret_cast<const char*>(p + 1)) <= uint64_t(end - p - 5)) {
        p += 5 + DecodeLE<uint32_t>(reinterpret_cast<const char*>(p + 1));
      } else {
        break;
      }
    }
    r->Advance(static_cast<size_t>(p - start));
    return true;
  }

  // False when the scan cannot tell which keys are read.
  bool ScanOps(Reader* r) {
    Status st;
    const char* p = nullptr;
    auto le = [&](size_t n, uint64_t* out) {  // an n-byte little-endian operand
      if (!r->Take(n, &p, &st)) return false;
      uint64_t v = 0;
      for (size_t k = 0; k < n; ++k) v |= uint64_t{static_cast<uint8_t>(p[k])} << (8 * k);
      *out = v;
      return true;
    };
    std::string text;
    bool too_long = false;
    auto line = [&] {  // as the VM's Line: up to '\n', without a trailing '\r'
      if (!r->Line(&text, &too_long, &st)) return false;
      if (!text.empty() && text.back() == '\r') text.pop_back();
      return true;
    };
    uint64_t n = 0;
    for (;;) {
      if (!ScanBuffered(r)) return false;
      if (!r->Take(1, &p, &st)) return false;  // no STOP: the VM reports it
      uint8_t op = static_cast<uint8_t>(*p);
      switch (op) {
        case '.': return true;  // STOP
        case '(': case '0': case '1': case '2': case 'N': case 0x88: case 0x89: case 'Q': case 'R':
        case 0x81: case 0x92: case 'a': case 'e': case 0x90: case 'b': case 0x93: case 'o': case 'd':
        case '}': case ']': case 0x8f: case ')': case 'l': case 't': case 0x91: case 0x85: case 0x86:
        case 0x87: case 0x94: case 's': case 'u':
          break;
        case 'K': case 'q': case 0x80: if (!r->Skip(1)) return false; break;
        case 'M': if (!r->Skip(2)) return false; break;
        case 'J': case 'r': if (!r->Skip(4)) return false; break;
        case 'G': case 0x95: if (!r->Skip(8)) return false; break;
        case 'h': if (!le(1, &n) || !Add(n)) return false; break;
        case 'j': if (!le(4, &n) || !Add(n)) return false; break;
        case 'g': {
          if (!line()) return false;
          uint64_t idx = 0;
          auto [q, ec] = std::from_chars(text.data(), text.data() + text.size(), idx);
          if (ec != std::errc() || q != text.data() + text.size() || !Add(idx)) return false;
          break;
        }
        case 'F': case 'I': case 'L': case 'S': case 'V': case 'P': case 'p':
          if (!line()) return false;
          break;
        case 'c': case 'i':
          if (!line() || !line()) return false;
          break;
        case 0x8a: case 'U': case 'C': case 0x8c:
          if (!le(1, &n) || !r->Skip(n)) return false;
          break;
        case 0x8b: case 'T':  // signed 32-bit lengths
          if (!le(4, &n) || (n & 0x80000000u) != 0 || !r->Skip(n)) return false;
          break;
        case 'X': case 'B':
          if (!le(4, &n) || !r->Skip(n)) return false;
          break;
        case 0x8d: case 0x8e: case 0x96:
          if (!le(8, &n) || !r->Skip(n)) return false;
          break;
        default:  // EXT*, out-of-band buffers, invalid: the VM reports them
          return false;
      }
    }
  }

  bool all_ = true;
  KeySet keys_;
};

// The VM's stack: a vector's interface, with push_back small enough to
// inline into the opcode loop (std::vector's is not, at -O2, and a large
// pickle pushes ~40 values per chunk). Growth is out of line.
class ValueStack {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  Value* back() const { return data_[size_ - 1]; }
  Value*& operator[](size_t i) { return data_[i]; }
  Value** begin() { return data_.get(); }
  Value** end() { return data_.get() + size_; }
  std::span<Value* const> span() const { return {data_.get(), size_}; }
  void pop_back() { --size_; }
  void resize(size_t n) {  // REQUIRES: n <= size() (the VM only shrinks it)
    size_ = n;
  }
  void push_back(Value* v) {
    if (size_ == cap_) [[unlikely]] Grow();
    data_[size_++] = v;
  }

 private:
  [[gnu::noinline]] void Grow() {
    size_t cap = cap_ == 0 ? 64 : cap_ * 2;
    auto d = std::make_unique<Value*[]>(cap);
    std::copy(data_.get(), data_.get() + size_, d.get());
    data_ = std::move(d);
    cap_ = cap;
  }
  std::unique_ptr<Value*[]> data_;
  size_t size_ = 0;
  size_t cap_ = 0;
};

// The values of the memo keys a later GET reads (MemoReads' keys), by key:
// open addressing over a power-of-two table sized up front for every wanted
// key (at most half full), so it never grows while the VM runs. A million
// chunks read ~15 million GETs back from a few thousand keys: the table stays
// in cache where a node-based map did not.
class KeptMemo {
 public:
  void Reserve(size_t keys) {
    size_t cap = 16;
    while (cap < 2 * keys + 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    shift_ = 64 - static_cast<unsigned>(std::countr_zero(cap));
    size_ = 0;
  }
  void Put(uint64_t key, Value* v) {  // REQUIRES: v != nullptr
    if (2 * (size_ + 1) > slots_.size()) Rehash();
    Slot& s = Find(key);
    if (s.v == nullptr) ++size_;
    s = Slot{key, v};
  }
  // nullptr when the key was never put.
  Value* Get(uint64_t key) const { return const_cast<KeptMemo*>(this)->Find(key).v; }

 private:
  struct Slot {
    uint64_t key = 0;
    Value* v = nullptr;  // nullptr: free
  };
  Slot& Find(uint64_t key) {
    size_t mask = slots_.size() - 1;
    size_t i = static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
    while (slots_[i].v != nullptr && slots_[i].key != key) i = (i + 1) & mask;
    return slots_[i];
  }
  void Rehash() {
    std::vector<Slot> old = std::move(slots_);
    Reserve(old.size());
    for (const Slot& s : old) {
      if (s.v != nullptr) Put(s.key, s.v);
    }
  }
  std::vector<Slot> slots_ = std::vector<Slot>(16);
  unsigned shift_ = 60;
  size_t size_ = 0;
};

class Machine {
 public:
  Machine(const ByteSource& src, uint64_t offset, const UnpickleOptions& opts)
      : src_(src), r_(src, offset), opts_(opts), arena_(std::make_unique<Arena>()), cur_(arena_.get()) {}

  Result<Unpickled> Run();

 private:
  // --- errors (cold: kept out of the opcode loop) ---
  [[gnu::cold, gnu::noinline]] Status Err(Code code, std::string_view msg) const {
    return Status(code, StrCat(src_.Name(), ": offset ", op_offset_, ": ", OpcodeName(op_), ": ",
                               msg));
  }
  Status Corrupt(std::string_view msg) const { return Err(Code::kDataLoss, msg); }
  Status Limit(std::string_view msg) const { return Err(Code::kResourceExhausted, msg); }
  [[gnu::cold, gnu::noinline]] Status Truncated() const {
    return DataLossError(StrCat(src_.Name(), ": unexpected end of pickle at offset ", r_.pos(),
                                " (no STOP; in ", OpcodeName(op_), " at offset ", op_offset_,
                                ")"));
  }
  [[gnu::cold, gnu::noinline]] Status ReadFailed(Status st) const {
    if (!st.ok()) return st.WithContext(StrCat(src_.Name(), ": offset ", op_offset_, ": ",
                                               OpcodeName(op_)));
    return Truncated();
  }

  // --- reading operands ---
  template <typename T>
  [[gnu::always_inline]] Status Fixed(T* out) {
    const char* p;
    if (!r_.Take(sizeof(T), &p, &read_st_)) [[unlikely]] return ReadFailed(read_st_);
    *out = DecodeLE<T>(p);
    return OkStatus();
  }
  // The next n bytes: a view into the resident source, or into payload_
  // (valid until the next Payload).
  Result<std::string_view> Payload(uint64_t n) {
    if (n > r_.remaining()) {
      return Corrupt(StrCat("length ", n, " exceeds the ", r_.remaining(), " bytes left"));
    }
    if (const char* p = r_.TakeView(static_cast<size_t>(n))) return std::string_view(p, static_cast<size_t>(n));
    payload_.clear();
    try {
      payload_.reserve(static_cast<size_t>(n));
    } catch (const std::bad_alloc&) {
      return Limit(StrCat("cannot allocate ", n, " bytes"));
    }
    CKPT_RETURN_IF_ERROR(r_.TakeInto(static_cast<size_t>(n), &payload_));
    return std::string_view(payload_);
  }
  Status Line(std::string* line) {
    bool too_long = false;
    Status st;
    if (!r_.Line(line, &too_long, &st)) {
      if (too_long) return Limit(StrCat("text line longer than ", kMaxLineBytes, " bytes"));
      return ReadFailed(st);
    }
    if (!line->empty() && line->back() == '\r') line->pop_back();
    return OkStatus();
  }

  // --- values ---
  Value* New(Kind k) {
    Value* v = cur_->New(k);
    v->offset = op_offset_;
    return v;
  }
  // Shared leaves always live in the main arena (they outlive any window).
  Value* Shared(Value** slot, Kind k, int64_t i = 0) {
    if (*slot == nullptr) {
      *slot = arena_->New(k);
      (*slot)->offset = op_offset_;
      (*slot)->i = i;
    }
    return *slot;
  }
  // Small ints are immutable leaves: one shared Value each (large metadata
  // pickles hold millions of them; the pickler never memoizes ints).
  Value* MakeInt(int64_t i) {
    if (Value** slot = SharedIntSlot(i)) return Shared(slot, Kind::kInt, i);
    Value* v = New(Kind::kInt);
    v->i = i;
    return v;
  }
  // The slot of a shared int, or nullptr for ints that are not shared.
  Value** SharedIntSlot(int64_t i) {
    if (i >= 0 && i < static_cast<int64_t>(std::size(small_ints_))) return &small_ints_[i];
    if (i >= 0 && i < kSharedIntLimit) {  // BININT2's range: shapes, offsets, counts
      auto& page = shared_ints_[static_cast<size_t>(i) / kSharedIntPage];
      if (page == nullptr) page = std::make_unique<Value*[]>(kSharedIntPage);  // zeroed
      return &page[static_cast<size_t>(i) % kSharedIntPage];
    }
    return nullptr;
  }
  Value* MakeIntFromBytes(std::string_view bytes) {
    int64_t i;
    if (internal_pickle::TwosComplementToInt64(bytes, &i)) return MakeInt(i);
    return MakeString(Kind::kBigInt, bytes);
  }
  Value* MakeString(Kind k, std::string_view s) {
    Value* v = cur_->Chars(k, s);
    v->offset = op_offset_;
    return v;
  }
  // Records that child now sits inside parent; rejects nesting bombs.
  Status Nest(Value* parent, const Value* child) {
    if (child != nullptr && child->depth + 1 > parent->depth) {
      parent->depth = child->depth + 1;
      if (parent->depth > opts_.max_depth) {
        return Limit(StrCat("containers nested deeper than ", opts_.max_depth));
      }
    }
    return OkStatus();
  }

  // --- stack ---
  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  [[gnu::always_inline]] Status Push(Value* v) {
    if (stack_.size() >= opts_.max_stack) [[unlikely]] return StackLimit();
    stack_.push_back(v);
    return OkStatus();
  }
  [[gnu::cold, gnu::noinline]] Status StackLimit() const {
    return Limit(StrCat("stack deeper than ", opts_.max_stack, " entries"));
  }
  [[gnu::cold, gnu::noinline]] Status Underflow() const {
    return Corrupt(marks_.empty() || stack_.size() > Fence() ? "stack underflow"
                                                            : "stack underflow (below MARK)");
  }
  // The top of the stack above the last MARK (popped or not); nullptr when
  // there is none (the caller reports Underflow(); the stack never holds
  // nullptr).
  Value* Pop() {
    if (stack_.size() <= Fence()) [[unlikely]] return nullptr;
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* Top() const {
    if (stack_.size() <= Fence()) [[unlikely]] return nullptr;
    return stack_.back();
  }
  // Pops everything above the last MARK, and the MARK.
  // The span stays valid until the next PopMark.
  Result<std::span<Value* const>> PopMark() {
    if (marks_.empty()) return Corrupt("could not find MARK");
    size_t m = marks_.back();
    marks_.pop_back();
    popped_.assign(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return std::span<Value* const>(popped_);
  }

  // --- memo ---
  // The common case inline (the next key in order, under the limit, never
  // read back: a large pickle's MEMOIZEs), the rest in MemoPutSlow.
  [[gnu::always_inline]] Status MemoPut(uint64_t idx, Value* v) {
    if (!reads_.all() && keys_in_order_ && idx == memo_count_ && memo_count_ < opts_.max_memo &&
        !reads_.Wanted(idx)) [[likely]] {
      ++memo_count_;
      return OkStatus();
    }
    return MemoPutSlow(idx, v);
  }
  [[gnu::noinline]] Status MemoPutSlow(uint64_t idx, Value* v) {
    if (!reads_.all()) {
      // Count the key as Python's len(memo) would (MEMOIZE's next key), keep
      // the value only when a later GET reads it. While each new key is the
      // next one (as picklers number them), the keys seen are [0, memo_count_)
      // and need no set; the first other key fills the set.
      bool fresh;
      if (keys_in_order_ && idx <= memo_count_) {
        fresh = idx == memo_count_;
      } else {
        if (keys_in_order_) {
          for (uint64_t k = 0; k < memo_count_; ++k) seen_.Insert(k);
          keys_in_order_ = false;
        }
        fresh = seen_.Insert(idx);
      }
      if (fresh) {
        if (memo_count_ >= opts_.max_memo) {
          return Limit(StrCat("memo larger than ", opts_.max_memo, " entries"));
        }
        ++memo_count_;
      }
      if (reads_.Wanted(idx)) {
        if (window_obj_ != nullptr) Escape();  // a later GET reads it
        kept_.Put(idx, v);
      }
      return OkStatus();
    }
    if (idx < dense_.size()) {
      if (dense_[idx] == nullptr) ++memo_count_;
      dense_[idx] = v;
      return OkStatus();
    }
    auto it = sparse_.find(idx);
    if (it != sparse_.end()) {
      it->second = v;
      return OkStatus();
    }
    if (memo_count_ >= opts_.max_memo) {
      return Limit(StrCat("memo larger than ", opts_.max_memo, " entries"));
    }
    ++memo_count_;
    if (idx <= dense_.size() * 2 + 1024) {
      dense_.resize(static_cast<size_t>(idx) + 1, nullptr);
      dense_[idx] = v;
    } else {
      sparse_.emplace(idx, v);
    }
    return OkStatus();
  }
  // GET: pushes the memo's value of idx.
  [[gnu::always_inline]] Status PushMemo(uint64_t idx) {
    Value* v = nullptr;
    if (!reads_.all()) {
      v = kept_.Get(idx);
    } else if (idx < dense_.size()) {
      v = dense_[idx];
    }
    if (v == nullptr) [[unlikely]] {
      auto it = sparse_.find(idx);
      if (it == sparse_.end()) return Corrupt(StrCat("memo key ", idx, " was never stored"));
      v = it->second;
    }
    if (v->kind == Kind::kGlobal && flat_on_ && window_obj_ == nullptr) [[unlikely]] {
      if (ReadFlat(v)) return OkStatus();
    }
    return Push(v);
  }

  // --- reducing objects while reading (UnpickleOptions::reducer) ---
  // While a window is open, new values go to scratch_arena_; Escape() marks
  // that something outside may point into it, so it is kept, not reused.
  static constexpr size_t kMaxWindowValues = size_t{1} << 16;
  static constexpr size_t kMaxKeptWindows = 1024;  // then reducing stops
  static std::unique_ptr<Arena> NewScratch() { return std::make_unique<Arena>(256, 4 << 10); }
  bool Reducible(const Value* callable) {
    if (!windows_on_ || window_obj_ != nullptr || callable->kind != Kind::kGlobal) return false;
    return Cached(callable).reducible;
  }
  void Escape() { window_escaped_ = true; }
  // Before changing an existing value: one not made in the window would keep
  // pointers into the scratch arena.
  void Touch(const Value* target) {
    if (window_obj_ != nullptr && !window_escaped_ && !scratch_arena_->Owns(target)) Escape();
  }
  void CloseWindow(bool complete) {
    std::optional<int64_t> index;
    if (complete && !window_escaped_) index = opts_.reducer->reduce(window_obj_->callable()->name(), FieldsOf(*window_obj_));
    if (index) {
      Value* stand_in = arena_->New(Kind::kInt);
      stand_in->i = *index;
      stand_in->reduced = true;
      stand_in->offset = window_obj_->offset;
      stack_[window_base_ - 1] = stand_in;
      scratch_arena_->Reset();
    } else {
      kept_values_ += scratch_arena_->size();
      arena_->Adopt(std::move(scratch_arena_));
      scratch_arena_ = NewScratch();
      if (++kept_windows_ >= kMaxKeptWindows) windows_on_ = false;
    }
    window_obj_ = nullptr;
    window_escaped_ = false;
    cur_ = arena_.get();
  }
  // After each opcode: the window's object must still sit where it was pushed.
  void CheckWindow() {
    if (stack_.size() < window_base_ || stack_[window_base_ - 1] != window_obj_) {
      Escape();
      CloseWindow(false);
      return;
    }
    if (scratch_arena_->size() > kMaxWindowValues) Escape();
  }

  // The reducer's view of an object the VM built (Reducer's Fields): views
  // into fields_, ints_ and strs_, valid until the next call.
  std::span<const Field> FieldsOf(const Value& obj);
  static Field FieldOf(std::string_view name, const Value* v, std::vector<int64_t>* ints,
                       std::vector<std::string_view>* strs);

  // --- reading objects flat (Reducer) ---
  // At a GET of `cls` (r_ just past it): when it is a class the reducer takes
  // and the object follows in its usual form (Reducer), reads it into
  // fields_, and when the reducer takes it pushes the stand-in and returns
  // true. Otherwise returns false having changed nothing, and the VM reads
  // the object.
  bool ReadFlat(const Value* cls);
  static constexpr size_t kMaxFlatFields = 8;
  static constexpr size_t kMaxFlatInts = 64;

  // --- globals and calls ---
  bool Allowed(std::string_view module, std::string_view name) const {
    if (IsAllowedGlobal(module, name)) return true;
    for (const AllowedGlobal& g : opts_.extra_allowed) {
      if (g.module == module && (g.name == "*" || g.name == name)) return true;
    }
    return false;
  }
  // What Call needs to know of a kGlobal value, remembered per value (a
  // stream names a handful of globals and reuses them through the memo).
  struct GlobalFacts {
    const Value* global;
    bool allowed;    // Allowed()
    bool reducible;  // one of opts_.reducer's class names
  };
  // Direct-mapped by address: globals outlive windows (MakeGlobal), so an
  // address names one global for the whole run.
  GlobalFacts Cached(const Value* global) {
    GlobalFacts& f = globals_cache_[(reinterpret_cast<uintptr_t>(global) >> 5) % std::size(globals_cache_)];
    if (f.global != global) {
      f = GlobalFacts{global, Allowed(global->str(), global->name()), false};
      if (opts_.reducer != nullptr) {
        for (std::string_view n : opts_.reducer->class_names) f.reducible = f.reducible || global->name() == n;
      }
    }
    return f;
  }
  Result<Value*> MakeGlobal(std::string_view module, std::string_view name);
  Result<Value*> Call(Value* callable, Value* args, bool newobj, Value* kwargs);
  Value* Fold(Value* callable, Value* args);

  // --- opcodes with bodies ---
  Status Step(uint8_t op, bool* stop);
  Status AppendTo(Value* target, std::span<Value* const> items);
  Status SetItemsOn(Value* target, std::span<Value* const> kv);
  Status LoadDecimal(bool is_long);
  Status LoadPySrcString();
  Status LoadRawUnicodeEscape();

  const ByteSource& src_;
  Reader r_;
  const UnpickleOptions& opts_;
  std::unique_ptr<Arena> arena_;  // the result's
  Arena* cur_;                    // where new values go: arena_, or scratch_arena_ in a window
  std::unique_ptr<Arena> scratch_arena_;  // made when the first window opens
  bool windows_on_ = false;
  bool flat_on_ = false;        // read_flat, with a reducer
  const Value* torch_size_ = nullptr;  // the global torch.Size once a flat read met it
  std::vector<Field> fields_;   // FieldsOf / ReadFlat
  std::vector<int64_t> ints_;
  std::vector<std::string_view> strs_;
  Value* window_obj_ = nullptr;  // the object being built in the open window, or nullptr
  size_t window_base_ = 0;       // stack size with it pushed
  size_t window_marks_ = 0;
  bool window_escaped_ = false;
  uint64_t kept_values_ = 0;  // in arenas adopted by arena_
  size_t kept_windows_ = 0;
  ValueStack stack_;
  std::vector<size_t> marks_;
  std::vector<Value*> popped_;  // PopMark's result
  GlobalFacts globals_cache_[64] = {};
  std::vector<Value*> dense_;
  std::unordered_map<uint64_t, Value*> sparse_;
  // With a successful scan: the keys the stream put (to count them) and the
  // values of those a GET reads.
  MemoReads reads_;
  KeySet seen_;  // unused while keys_in_order_
  bool keys_in_order_ = true;
  KeptMemo kept_;
  size_t memo_count_ = 0;
  Value* none_ = nullptr;
  Value* true_ = nullptr;
  Value* false_ = nullptr;
  Value* small_ints_[256] = {};
  static constexpr int64_t kSharedIntLimit = 1 << 16;
  // Ints in [256, 65536), made on first use, in pages of 1024 slots made on
  // first use too (a short stream with one such int costs 8 KiB, not 512 KiB).
  static constexpr size_t kSharedIntPage = 1024;
  std::unique_ptr<Value*[]> shared_ints_[kSharedIntLimit / kSharedIntPage];
  Value* empty_tuple_ = nullptr;
  Value* root_ = nullptr;
  uint64_t op_offset_ = 0;
  uint8_t op_ = 0;
  std::string scratch_;
  std::string payload_;
  Status read_st_;  // Fixed's read error
};

Result<Value*> Machine::MakeGlobal(std::string_view module_in, std::string_view name_in) {
  auto [module, name] = NormalizeGlobal(module_in, name_in);
  if (opts_.mode == Mode::kStrict && !Allowed(module, name)) {
    return Err(Code::kUnimplemented,
               StrCat("global ", Quote(module + "." + name),
                      " is not allowed (strict mode; inspect mode shows it as an opaque object)"));
  }
  if (window_obj_ != nullptr) Escape();  // the globals cache (Cached) keeps its address
  Value* g = cur_->Global(module, name);
  g->offset = op_offset_;
  return g;
}

Value* Machine::Fold(Value* callable, Value* args) {
  if (args == nullptr || args->kind != Kind::kTuple) return nullptr;
  std::span<Value* const> a = args->items();
  std::string_view m = callable->str();
  std::string_view n = callable->name();
  if (m == "collections" && n == "OrderedDict" && a.empty()) {
    Value* v = New(Kind::kDict);
    v->ordered = true;
    return v;
  }
  if (m == "torch" && n == "Size" && a.size() == 1 && a[0]->kind == Kind::kTuple) {
    for (const Value* d : a[0]->items()) {
      if (d->kind != Kind::kInt) return nullptr;
    }
    Value* v = New(Kind::kTuple);
    cur_->ShareItems(v, a[0]);  // tuples never change: the fold shares the elements
    v->torch_size = true;
    v->depth = 1;
    return v;
  }
  if (m == "_codecs" && n == "encode" && a.size() == 2 && a[0]->kind == Kind::kString &&
      a[1]->kind == Kind::kString && (a[1]->str() == "latin1" || a[1]->str() == "latin-1")) {
    std::string bytes;
    if (!internal_pickle::Latin1FromUtf8(a[0]->str(), &bytes)) return nullptr;
    return MakeString(Kind::kBytes, std::move(bytes));
  }
  if (m != "builtins") return nullptr;
  if (n == "bytes" || n == "bytearray") {
    Value* v = nullptr;
    if (a.empty()) {
      v = New(Kind::kBytes);
    } else if (a.size() == 1 && a[0]->kind == Kind::kBytes) {
      v = MakeString(Kind::kBytes, a[0]->str());
    } else if (n == "bytearray" && a.size() == 2 && a[0]->kind == Kind::kString &&
               a[1]->kind == Kind::kString && (a[1]->str() == "latin-1" || a[1]->str() == "latin1")) {
      std::string bytes;
      if (!internal_pickle::Latin1FromUtf8(a[0]->str(), &bytes)) return nullptr;
      v = MakeString(Kind::kBytes, std::move(bytes));
    } else {
      return nullptr;
    }
    v->bytearray = n == "bytearray";
    return v;
  }
  if (n == "set" || n == "frozenset") {
    Value* v = nullptr;
    if (a.empty()) {
      v = New(Kind::kSet);
    } else if (a.size() == 1 && a[0]->kind == Kind::kList) {
      v = New(Kind::kSet);
      cur_->SetItems(v, a[0]->items());
      v->depth = a[0]->depth;
    } else {
      return nullptr;
    }
    v->frozen = n == "frozenset";
    return v;
  }
  return nullptr;
}

Result<Value*> Machine::Call(Value* callable, Value* args, bool newobj, Value* kwargs) {
  bool opaque = false;
  if (callable->kind != Kind::kGlobal) {
    if (opts_.mode == Mode::kStrict) {
      return Corrupt(StrCat("callable is a ", KindName(callable->kind), ", not a global"));
    }
    opaque = true;
  } else {
    opaque = !Cached(callable).allowed;
    if (!newobj && kwargs == nullptr && !opaque) {
      if (Value* folded = Fold(callable, args)) return folded;
    }
  }
  bool open = !opaque && Reducible(callable);
  if (open) {
    if (scratch_arena_ == nullptr) scratch_arena_ = NewScratch();
    cur_ = scratch_arena_.get();
  }
  if (opaque && window_obj_ != nullptr) Escape();  // listed from the result (ForEach)
  Value* v = cur_->Object(callable, args, newobj);
  v->offset = op_offset_;
  if (kwargs != nullptr) cur_->SetKwargs(v, kwargs);
  v->opaque = opaque;
  if (open) {
    window_obj_ = v;
    window_base_ = stack_.size() + 1;  // the caller pushes it
    window_marks_ = marks_.size();
  }
  CKPT_RETURN_IF_ERROR(Nest(v, args));
  CKPT_RETURN_IF_ERROR(Nest(v, kwargs));
  return v;
}

Field Machine::FieldOf(std::string_view name, const Value* v, std::vector<int64_t>* ints,
                       std::vector<std::string_view>* strs) {
  Field f;
  f.name = name;
  switch (v->kind) {
    case Kind::kNone: f.type = Field::Type::kNone; return f;
    case Kind::kInt:
      if (v->reduced) return f;  // a stand-in is no number of the stream's
      f.type = Field::Type::kInt;
      f.i = v->i;
      return f;
    case Kind::kString: f.type = Field::Type::kString; f.str = v->str(); return f;
    case Kind::kTuple: case Kind::kList: {
      const auto items = v->items();
      bool all_ints = true, all_strs = !items.empty();
      for (const Value* e : items) {
        all_ints = all_ints && ((e->kind == Kind::kInt && !e->reduced) || e->kind == Kind::kBool);
        all_strs = all_strs && e->kind == Kind::kString;
      }
      if (all_ints) {  // the caller reserved room: these spans never move
        const size_t first = ints->size();
        for (const Value* e : items) ints->push_back(e->i);
        f.type = Field::Type::kInts;
        f.ints = {ints->data() + first, items.size()};
      } else if (all_strs) {
        const size_t first = strs->size();
        for (const Value* e : items) strs->push_back(e->str());
        f.type = Field::Type::kStrings;
        f.strs = {strs->data() + first, items.size()};
      }
      return f;
    }
    default: return f;
  }
}

std::span<const Field> Machine::FieldsOf(const Value& obj) {
  fields_.clear();
  ints_.clear();
  strs_.clear();
  const Value* dicts[2] = {nullptr, nullptr};
  if (const Value* st = obj.state()) {
    if (st->kind == Kind::kDict) {
      dicts[0] = st;
    } else if (st->kind == Kind::kTuple && st->items().size() == 2) {
      for (size_t k = 0; k < 2; ++k) {
        if (st->items()[k]->kind == Kind::kDict) dicts[k] = st->items()[k];
      }
    }
  }
  size_t n_elems = 0;  // room for every sequence's elements, so no span moves
  for (const Value* d : dicts) {
    if (d == nullptr) continue;
    for (const auto& [k, v] : d->dict()) n_elems += v->kind == Kind::kTuple || v->kind == Kind::kList ? v->items().size() : 0;
  }
  ints_.reserve(n_elems);
  strs_.reserve(n_elems);
  std::unordered_map<std::string_view, size_t> seen;  // used past a few keys only
  const size_t first = 0;
  for (const Value* d : dicts) {
    if (d == nullptr) continue;
    for (const auto& [k, v] : d->dict()) {
      if (k->kind != Kind::kString) continue;
      Field f = FieldOf(k->str(), v, &ints_, &strs_);
      // A name set twice keeps its first place and takes the last value, as
      // Python leaves it (a dict's repeated key; the slots dict after the
      // other).
      size_t at = SIZE_MAX;
      if (fields_.size() - first <= 16) {
        for (size_t j = first; j < fields_.size() && at == SIZE_MAX; ++j) {
          if (fields_[j].name == f.name) at = j;
        }
        if (at == SIZE_MAX && fields_.size() - first == 16) {
          for (size_t j = first; j < fields_.size(); ++j) seen.emplace(fields_[j].name, j);
        }
      } else if (auto it = seen.find(f.name); it != seen.end()) {
        at = it->second;
      }
      if (at != SIZE_MAX) {
        fields_[at] = f;
      } else {
        if (fields_.size() - first >= 16) seen.emplace(f.name, fields_.size());
        fields_.push_back(f);
      }
    }
  }
  return fields_;
}

bool Machine::ReadFlat(const Value* cls) {
  if (!windows_on_ || !keys_in_order_) return false;
  const GlobalFacts facts = Cached(cls);
  if (!facts.reducible || !facts.allowed) return false;
  // Limits the VM checks on the way (stack, MARK and value nesting) are left
  // to it: the object takes at most 2 MARKs, nesting 4 and this much stack.
  if (stack_.size() + 2 * kMaxFlatFields + kMaxFlatInts + 8 > opts_.max_stack || marks_.size() + 2 > opts_.max_depth ||
      opts_.max_depth < 5) {
    return false;
  }
  const uint8_t *p, *end;
  r_.Buffered(&p, &end);
  if (p == nullptr) return false;
  const uint8_t* const start = p;
  const uint64_t start_pos = r_.pos();
  const uint64_t newobj_at = start_pos + 1;
  uint64_t memo = memo_count_;  // the next MEMOIZE's key
  // The shared leaves the VM would make (None, the empty tuple, small ints)
  // are made here too, at the offset of the opcode that first reads one, so
  // that their offsets (which errors name) do not depend on the way read.
  // Made even when the object is then left to the VM: it makes them at the
  // same offsets.
  const uint64_t saved_op_offset = op_offset_;
  struct Restore {
    uint64_t& at;
    uint64_t value;
    ~Restore() { at = value; }
  } restore{op_offset_, saved_op_offset};
  auto share = [&](Value** slot, Kind k, int64_t i) {
    if (slot != nullptr && *slot == nullptr) {
      op_offset_ = start_pos + static_cast<uint64_t>(p - start);
      Shared(slot, k, i);
    }
  };
  auto left = [&] { return static_cast<size_t>(end - p); };
  auto next_is = [&](uint8_t op) {
    if (p == end || *p != op) return false;
    ++p;
    return true;
  };
  auto memoize = [&] {  // MEMOIZEs of values no later GET reads
    while (p != end && *p == 0x94) {
      if (memo >= opts_.max_memo || reads_.Wanted(memo)) return false;
      ++memo;
      ++p;
    }
    return true;
  };
  auto get = [&](const Value** v) {  // BINGET / LONG_BINGET
    uint64_t idx;
    if (left() >= 2 && *p == 'h') {
      idx = p[1];
      p += 2;
    } else if (left() >= 5 && *p == 'j') {
      idx = DecodeLE<uint32_t>(p + 1);
      p += 5;
    } else {
      return false;
    }
    *v = kept_.Get(idx);
    return *v != nullptr;
  };
  auto str = [&](std::string_view* s) {  // SHORT_BINUNICODE / BINUNICODE, or a GET of a str
    if (left() >= 2 && *p == 0x8c && p[1] <= left() - 2) {
      *s = {reinterpret_cast<const char*>(p + 2), p[1]};
      p += 2 + p[1];
      return memoize();
    }
    if (left() >= 5 && *p == 'X' && DecodeLE<uint32_t>(p + 1) <= left() - 5) {
      const uint32_t n = DecodeLE<uint32_t>(p + 1);
      *s = {reinterpret_cast<const char*>(p + 5), n};
      p += 5 + n;
      return memoize();
    }
    const Value* v;
    if (!get(&v) || v->kind != Kind::kString) return false;
    *s = v->str();
    return true;
  };
  auto integer = [&](int64_t* i) {  // BININT1 / BININT2 / BININT
    if (left() >= 2 && *p == 'K') {
      share(SharedIntSlot(p[1]), Kind::kInt, p[1]);
      *i = p[1];
      p += 2;
    } else if (left() >= 3 && *p == 'M') {
      *i = DecodeLE<uint16_t>(p + 1);
      share(SharedIntSlot(*i), Kind::kInt, *i);
      p += 3;
    } else if (left() >= 5 && *p == 'J') {
      *i = DecodeLE<int32_t>(p + 1);
      share(SharedIntSlot(*i), Kind::kInt, *i);
      p += 5;
    } else {
      return false;
    }
    return true;
  };
  auto is_int = [&] { return p != end && (*p == 'K' || *p == 'M' || *p == 'J'); };
  // torch.Size(tuple of ints), after the GET of torch.Size.
  auto size_args = [&](std::span<const int64_t>* out) {
    const bool marked = next_is('(');
    const size_t first = ints_.size();
    while (is_int()) {
      int64_t i = 0;
      if (ints_.size() == kMaxFlatInts || !integer(&i)) return false;
      ints_.push_back(i);
    }
    const size_t n = ints_.size() - first;
    if (!marked && n == 0 && p != end && *p == ')') share(&empty_tuple_, Kind::kTuple, 0);
    const bool tupled = marked ? next_is('t') : n == 0 ? next_is(')') : n <= 3 && next_is(static_cast<uint8_t>(0x84 + n));
    if (!tupled || !memoize() || !next_is(0x85) || !memoize() || !next_is('R') || !memoize()) return false;
    *out = {ints_.data() + first, n};
    return true;
  };

  if (p != end && *p == ')') share(&empty_tuple_, Kind::kTuple, 0);
  if (!next_is(')') || !next_is(0x81) || !memoize() || !next_is('}') || !memoize() || !next_is('(')) return false;
  fields_.clear();
  ints_.clear();
  ints_.reserve(kMaxFlatInts);  // the spans into it never move
  while (!next_is('u')) {
    if (fields_.size() == kMaxFlatFields) return false;
    Field f;
    if (!str(&f.name) || p == end) return false;
    if (*p == 'N') {
      share(&none_, Kind::kNone, 0);
      ++p;
      f.type = Field::Type::kNone;
    } else if (is_int()) {
      f.type = Field::Type::kInt;
      if (!integer(&f.i)) return false;
    } else if (*p == 0x8c || *p == 'X') {
      f.type = Field::Type::kString;
      if (!str(&f.str)) return false;
    } else {
      const Value* v;
      if (!get(&v)) return false;
      if (v->kind == Kind::kString) {
        f.type = Field::Type::kString;
        f.str = v->str();
      } else {
        if (v != torch_size_) {
          if (!v->is_global("torch", "Size") || !Cached(v).allowed) return false;
          torch_size_ = v;
        }
        f.type = Field::Type::kInts;
        if (!size_args(&f.ints)) return false;
      }
    }
    for (const Field& g : fields_) {
      if (g.name == f.name) return false;
    }
    fields_.push_back(f);
  }
  if (!next_is('b')) return false;
  const std::optional<int64_t> index = opts_.reducer->reduce(cls->name(), fields_);
  if (!index) return false;
  memo_count_ = memo;
  r_.Advance(static_cast<size_t>(p - start));
  Value* stand_in = arena_->New(Kind::kInt);
  stand_in->i = *index;
  stand_in->reduced = true;
  stand_in->offset = newobj_at;
  stack_.push_back(stand_in);
  return true;
}

Status Machine::AppendTo(Value* target, std::span<Value* const> items) {
  if (target->kind != Kind::kList && target->kind != Kind::kObject &&
      !(target->kind == Kind::kSet && op_ == 0x90)) {
    return Corrupt(StrCat("cannot append to a ", KindName(target->kind)));
  }
  for (Value* v : items) CKPT_RETURN_IF_ERROR(Nest(target, v));
  Touch(target);
  cur_->Append(target, items);
  return OkStatus();
}

Status Machine::SetItemsOn(Value* target, std::span<Value* const> kv) {
  if (kv.size() % 2 != 0) return Corrupt("odd number of items for SETITEMS");
  if (target->kind != Kind::kDict && target->kind != Kind::kObject) {
    return Corrupt(StrCat("cannot set items on a ", KindName(target->kind)));
  }
  Touch(target);
  for (size_t i = 0; i < kv.size(); i += 2) {
    CKPT_RETURN_IF_ERROR(Nest(target, kv[i]));
    CKPT_RETURN_IF_ERROR(Nest(target, kv[i + 1]));
    cur_->SetItem(target, kv[i], kv[i + 1]);
  }
  return OkStatus();
}

// INT / LONG text forms (protocol 0): decimal, optional trailing 'L'.
Status Machine::LoadDecimal(bool is_long) {
  CKPT_RETURN_IF_ERROR(Line(&scratch_));
  std::string_view t = scratch_;
  while (!t.empty() && (t.back() == ' ')) t.remove_suffix(1);
  if (!is_long && (t == "00" || t == "01")) {
    return Push(t == "01" ? Shared(&true_, Kind::kBool, 1) : Shared(&false_, Kind::kBool, 0));
  }
  if (!t.empty() && t.back() == 'L') t.remove_suffix(1);
  if (t.size() > kMaxDecimalDigits) {
    return Limit(StrCat("integer literal of ", t.size(), " digits exceeds ", kMaxDecimalDigits));
  }
  int64_t i = 0;
  auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), i);
  if (ec == std::errc() && ptr == t.data() + t.size() && !t.empty()) return Push(MakeInt(i));
  std::string bytes;
  if (!internal_pickle::DecimalToTwosComplement(t, &bytes)) {
    return Corrupt(StrCat("invalid integer literal ", Quote(t)));
  }
  return Push(MakeIntFromBytes(std::move(bytes)));
}

// STRING: a Python 2 repr() literal, 'abc' or "abc", with backslash escapes.
Status Machine::LoadPySrcString() {
  CKPT_RETURN_IF_ERROR(Line(&scratch_));
  std::string_view t = scratch_;
  if (t.size() < 2 || (t.front() != '\'' && t.front() != '"') || t.back() != t.front()) {
    return Corrupt("the STRING opcode argument must be quoted");
  }
  t = t.substr(1, t.size() - 2);
  std::string out;
  out.reserve(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    if (c != '\\' || i + 1 == t.size()) {
      out.push_back(c);
      continue;
    }
    char e = t[++i];
    switch (e) {
      case 'n': out.push_back('\n'); break;
      case 't': out.push_back('\t'); break;
      case 'r': out.push_back('\r'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'v': out.push_back('\v'); break;
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case '\n': break;
      case 'x': {
        if (i + 2 >= t.size()) {
          return Corrupt("truncated \\x escape in STRING");
        }
        unsigned v = 0;
        auto [p, ec] = std::from_chars(t.data() + i + 1, t.data() + i + 3, v, 16);
        if (ec != std::errc() || p != t.data() + i + 3) return Corrupt("bad \\x escape in STRING");
        out.push_back(static_cast<char>(v));
        i += 2;
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          unsigned v = static_cast<unsigned>(e - '0');
          for (int k = 0; k < 2 && i + 1 < t.size() && t[i + 1] >= '0' && t[i + 1] <= '7'; ++k) {
            v = v * 8 + static_cast<unsigned>(t[++i] - '0');
          }
          out.push_back(static_cast<char>(v & 0xFF));
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return Push(MakeString(Kind::kString, std::move(out)));
}

// UNICODE: raw-unicode-escape: bytes are Latin-1 code points, except \uXXXX
// and \UXXXXXXXX escapes.
Status Machine::LoadRawUnicodeEscape() {
  CKPT_RETURN_IF_ERROR(Line(&scratch_));
  std::string_view t = scratch_;
  std::string out;
  out.reserve(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(t[i]);
    if (c == '\\' && i + 1 < t.size() && (t[i + 1] == 'u' || t[i + 1] == 'U')) {
      size_t n = t[i + 1] == 'u' ? 4 : 8;
      if (i + 2 + n > t.size()) return Corrupt("truncated \\u escape in UNICODE");
      uint32_t cp = 0;
      auto [p, ec] = std::from_chars(t.data() + i + 2, t.data() + i + 2 + n, cp, 16);
      if (ec != std::errc() || p != t.data() + i + 2 + n || cp > 0x10FFFF) {
        return Corrupt("bad \\u escape in UNICODE");
      }
      AppendUtf8(&out, cp);
      i += 1 + n;
    } else {
      AppendUtf8(&out, c);
    }
  }
  return Push(MakeString(Kind::kString, std::move(out)));
}

Status Machine::Step(uint8_t op, bool* stop) {
  switch (op) {
    case '(':  // MARK
      if (marks_.size() >= opts_.max_depth) {
        return Limit(StrCat("MARKs nested deeper than ", opts_.max_depth));
      }
      marks_.push_back(stack_.size());
      return OkStatus();
    case '.': {  // STOP
      root_ = Pop();
      if (root_ == nullptr) [[unlikely]] return Underflow();
      *stop = true;
      return OkStatus();
    }
    case '0':  // POP; with an empty frame, _pickle.c pops the MARK instead
      if (stack_.size() > Fence()) {
        stack_.pop_back();
        return OkStatus();
      }
      if (!marks_.empty()) {
        marks_.pop_back();
        return OkStatus();
      }
      return Underflow();
    case '1': {  // POP_MARK
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      (void)items;
      return OkStatus();
    }
    case '2': {  // DUP
      Value* v = Top();
      if (v == nullptr) [[unlikely]] return Underflow();
      return Push(v);
    }
    case 'F': {  // FLOAT
      CKPT_RETURN_IF_ERROR(Line(&scratch_));
      double d = 0;
      auto [p, ec] = std::from_chars(scratch_.data(), scratch_.data() + scratch_.size(), d);
      if (ec != std::errc() || p != scratch_.data() + scratch_.size()) {
        return Corrupt(StrCat("invalid float literal ", Quote(scratch_)));
      }
      Value* v = New(Kind::kFloat);
      v->f = d;
      return Push(v);
    }
    case 'I': return LoadDecimal(false);
    case 'L': return LoadDecimal(true);
    case 'J': {
      int32_t x = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&x));
      return Push(MakeInt(x));
    }
    case 'K': {
      uint8_t x = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&x));
      return Push(MakeInt(x));
    }
    case 'M': {
      uint16_t x = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&x));
      return Push(MakeInt(x));
    }
    case 0x8a: {  // LONG1
      uint8_t n = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&n));
      CKPT_ASSIGN_OR_RETURN(std::string_view bytes, Payload(n));
      return Push(MakeIntFromBytes(bytes));
    }
    case 0x8b: {  // LONG4
      int32_t n = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&n));
      if (n < 0) return Corrupt("negative byte count");
      CKPT_ASSIGN_OR_RETURN(std::string_view bytes, Payload(static_cast<uint64_t>(n)));
      return Push(MakeIntFromBytes(bytes));
    }
    case 'N': return Push(Shared(&none_, Kind::kNone));
    case 0x88: return Push(Shared(&true_, Kind::kBool, 1));
    case 0x89: return Push(Shared(&false_, Kind::kBool, 0));
    case 'G': {  // BINFLOAT, big-endian IEEE 754
      const char* p;
      Status st;
      if (!r_.Take(8, &p, &st)) return ReadFailed(st);
      uint64_t bits = DecodeBE64(p);
      Value* v = New(Kind::kFloat);
      std::memcpy(&v->f, &bits, 8);
      return Push(v);
    }
    case 'P': {  // PERSID
      CKPT_RETURN_IF_ERROR(Line(&scratch_));
      Value* v = New(Kind::kPersistentId);
      cur_->Append(v, MakeString(Kind::kString, scratch_));
      v->depth = 1;
      return Push(v);
    }
    case 'Q': {  // BINPERSID
      Value* pid = Pop();
      if (pid == nullptr) [[unlikely]] return Underflow();
      Value* v = New(Kind::kPersistentId);
      cur_->Append(v, pid);
      CKPT_RETURN_IF_ERROR(Nest(v, pid));
      return Push(v);
    }
    case 'R': {  // REDUCE
      Value* args = Pop();
      if (args == nullptr) [[unlikely]] return Underflow();
      Value* callable = Pop();
      if (callable == nullptr) [[unlikely]] return Underflow();
      CKPT_ASSIGN_OR_RETURN(Value * v, Call(callable, args, false, nullptr));
      return Push(v);
    }
    case 0x81: {  // NEWOBJ
      Value* args = Pop();
      if (args == nullptr) [[unlikely]] return Underflow();
      Value* cls = Pop();
      if (cls == nullptr) [[unlikely]] return Underflow();
      CKPT_ASSIGN_OR_RETURN(Value * v, Call(cls, args, true, nullptr));
      return Push(v);
    }
    case 0x92: {  // NEWOBJ_EX
      Value* kwargs = Pop();
      if (kwargs == nullptr) [[unlikely]] return Underflow();
      Value* args = Pop();
      if (args == nullptr) [[unlikely]] return Underflow();
      Value* cls = Pop();
      if (cls == nullptr) [[unlikely]] return Underflow();
      CKPT_ASSIGN_OR_RETURN(Value * v, Call(cls, args, true, kwargs));
      return Push(v);
    }
    case 'S': return LoadPySrcString();
    case 'V': return LoadRawUnicodeEscape();
    case 'T': case 'U': case 'X': case 0x8c: case 0x8d:
    case 'B': case 'C': case 0x8e: case 0x96: {
      uint64_t n = 0;
      if (op == 'U' || op == 0x8c || op == 'C') {
        uint8_t x = 0;
        CKPT_RETURN_IF_ERROR(Fixed(&x));
        n = x;
      } else if (op == 'T') {
        int32_t x = 0;
        CKPT_RETURN_IF_ERROR(Fixed(&x));
        if (x < 0) return Corrupt("negative length");
        n = static_cast<uint64_t>(x);
      } else if (op == 'X' || op == 'B') {
        uint32_t x = 0;
        CKPT_RETURN_IF_ERROR(Fixed(&x));
        n = x;
      } else {
        CKPT_RETURN_IF_ERROR(Fixed(&n));
      }
      bool is_bytes = op == 'B' || op == 'C' || op == 0x8e || op == 0x96;
      CKPT_ASSIGN_OR_RETURN(std::string_view bytes, Payload(n));
      Value* v = MakeString(is_bytes ? Kind::kBytes : Kind::kString, bytes);
      v->bytearray = op == 0x96;
      return Push(v);
    }
    case 'a': {  // APPEND
      Value* v = Pop();
      if (v == nullptr) [[unlikely]] return Underflow();
      Value* target = Top();
      if (target == nullptr) [[unlikely]] return Underflow();
      return AppendTo(target, std::span<Value* const>(&v, 1));
    }
    case 'e': case 0x90: {  // APPENDS, ADDITEMS
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      Value* target = Top();
      if (target == nullptr) [[unlikely]] return Underflow();
      return AppendTo(target, std::move(items));
    }
    case 'b': {  // BUILD
      Value* state = Pop();
      if (state == nullptr) [[unlikely]] return Underflow();
      Value* target = Top();
      if (target == nullptr) [[unlikely]] return Underflow();
      if (target->kind != Kind::kObject && !(target->kind == Kind::kDict && target->ordered)) {
        return Corrupt(StrCat("cannot BUILD a ", KindName(target->kind)));
      }
      Touch(target);
      cur_->SetState(target, state);
      CKPT_RETURN_IF_ERROR(Nest(target, state));
      if (target == window_obj_) {
        CloseWindow(stack_.size() == window_base_ && marks_.size() == window_marks_);
      }
      return OkStatus();
    }
    case 'c': {  // GLOBAL
      std::string module, name;
      CKPT_RETURN_IF_ERROR(Line(&module));
      CKPT_RETURN_IF_ERROR(Line(&name));
      CKPT_ASSIGN_OR_RETURN(Value * g, MakeGlobal(module, name));
      return Push(g);
    }
    case 0x93: {  // STACK_GLOBAL
      Value* name = Pop();
      if (name == nullptr) [[unlikely]] return Underflow();
      Value* module = Pop();
      if (module == nullptr) [[unlikely]] return Underflow();
      if (name->kind != Kind::kString || module->kind != Kind::kString) {
        return Corrupt("module and name must be str");
      }
      CKPT_ASSIGN_OR_RETURN(Value * g, MakeGlobal(module->str(), name->str()));
      return Push(g);
    }
    case 'i': {  // INST
      std::string module, name;
      CKPT_RETURN_IF_ERROR(Line(&module));
      CKPT_RETURN_IF_ERROR(Line(&name));
      CKPT_ASSIGN_OR_RETURN(Value * g, MakeGlobal(module, name));
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      Value* args = New(Kind::kTuple);
      for (Value* x : items) CKPT_RETURN_IF_ERROR(Nest(args, x));
      cur_->SetItems(args, items);
      CKPT_ASSIGN_OR_RETURN(Value * v, Call(g, args, false, nullptr));
      return Push(v);
    }
    case 'o': {  // OBJ
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      if (items.empty()) return Corrupt("no class on the stack");
      Value* args = New(Kind::kTuple);
      cur_->SetItems(args, items.subspan(1));
      for (Value* x : args->items()) CKPT_RETURN_IF_ERROR(Nest(args, x));
      CKPT_ASSIGN_OR_RETURN(Value * v, Call(items[0], args, false, nullptr));
      return Push(v);
    }
    case 'd': {  // DICT
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      if (items.size() % 2 != 0) return Corrupt("odd number of items for DICT");
      Value* v = New(Kind::kDict);
      CKPT_RETURN_IF_ERROR(SetItemsOn(v, items));
      return Push(v);
    }
    case '}': return Push(New(Kind::kDict));
    case ']': return Push(New(Kind::kList));
    case 0x8f: return Push(New(Kind::kSet));
    case ')': return Push(Shared(&empty_tuple_, Kind::kTuple));
    case 'l': case 't': case 0x91: {  // LIST, TUPLE, FROZENSET
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      Value* v = New(op == 'l' ? Kind::kList : op == 't' ? Kind::kTuple : Kind::kSet);
      v->frozen = op == 0x91;
      for (Value* x : items) CKPT_RETURN_IF_ERROR(Nest(v, x));
      cur_->SetItems(v, items);
      return Push(v);
    }
    case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
      size_t n = op - 0x84u;
      if (stack_.size() < Fence() + n) return Underflow();
      Value* v = New(Kind::kTuple);
      cur_->SetItems(v, stack_.span().last(n));
      stack_.resize(stack_.size() - n);
      for (Value* x : v->items()) CKPT_RETURN_IF_ERROR(Nest(v, x));
      return Push(v);
    }
    case 'g': case 'p': {  // GET, PUT (decimal text index)
      CKPT_RETURN_IF_ERROR(Line(&scratch_));
      uint64_t idx = 0;
      auto [p, ec] = std::from_chars(scratch_.data(), scratch_.data() + scratch_.size(), idx);
      if (ec != std::errc() || p != scratch_.data() + scratch_.size()) {
        return Corrupt(StrCat("invalid memo key ", Quote(scratch_)));
      }
      if (op == 'g') return PushMemo(idx);
      Value* v = Top();
      if (v == nullptr) [[unlikely]] return Underflow();
      return MemoPut(idx, v);
    }
    case 'h': case 'q': {
      uint8_t idx = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&idx));
      if (op == 'h') return PushMemo(idx);
      Value* v = Top();
      if (v == nullptr) [[unlikely]] return Underflow();
      return MemoPut(idx, v);
    }
    case 'j': case 'r': {
      uint32_t idx = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&idx));
      if (op == 'j') return PushMemo(idx);
      Value* v = Top();
      if (v == nullptr) [[unlikely]] return Underflow();
      return MemoPut(idx, v);
    }
    case 0x94:  // MEMOIZE
      if (stack_.size() <= Fence()) [[unlikely]] return Underflow();
      return MemoPut(memo_count_, stack_.back());
    case 's': {  // SETITEM
      Value* value = Pop();
      if (value == nullptr) [[unlikely]] return Underflow();
      Value* key = Pop();
      if (key == nullptr) [[unlikely]] return Underflow();
      Value* target = Top();
      if (target == nullptr) [[unlikely]] return Underflow();
      Value* kv[2] = {key, value};
      return SetItemsOn(target, kv);
    }
    case 'u': {  // SETITEMS
      CKPT_ASSIGN_OR_RETURN(auto items, PopMark());
      Value* target = Top();
      if (target == nullptr) [[unlikely]] return Underflow();
      return SetItemsOn(target, items);
    }
    case 0x80: {  // PROTO
      uint8_t proto = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&proto));
      if (proto > 5) {
        return Err(Code::kUnimplemented, StrCat("unsupported pickle protocol ", proto));
      }
      return OkStatus();
    }
    case 0x95: {  // FRAME: framing is only a read-ahead hint; check its length
      uint64_t n = 0;
      CKPT_RETURN_IF_ERROR(Fixed(&n));
      if (n > r_.remaining()) {
        return Corrupt(StrCat("frame length ", n, " exceeds the ", r_.remaining(), " bytes left"));
      }
      return OkStatus();
    }
    case 0x82: case 0x83: case 0x84:
      return Err(Code::kUnimplemented, "extension registry codes are not supported");
    case 0x97: case 0x98:
      return Err(Code::kUnimplemented, "out-of-band buffers are not supported");
    default:
      return Corrupt(StrCat("invalid opcode 0x", fmt::format("{:02x}", op)));
  }
}

Result<Unpickled> Machine::Run() {
  try {
    reads_.Scan(Reader(src_, r_.pos()));
    kept_.Reserve(reads_.count());
    windows_on_ = opts_.reducer != nullptr && !reads_.all();
    flat_on_ = windows_on_ && opts_.read_flat;
    for (;;) {
      op_offset_ = r_.pos();
      const char* p;
      Status st;
      if (!r_.Take(1, &p, &st)) {
        op_ = 0;
        if (!st.ok()) return st.WithContext(StrCat(src_.Name(), ": offset ", op_offset_));
        return DataLossError(StrCat(src_.Name(), ": unexpected end of pickle at offset ",
                                    op_offset_, " (no STOP)"));
      }
      op_ = static_cast<uint8_t>(*p);
      bool stop = false;
      CKPT_RETURN_IF_ERROR(Step(op_, &stop));
      // Protocol 4 follows most values with a MEMOIZE (a quarter of a large
      // pickle's opcodes): taken here, a predictable branch instead of a trip
      // through the opcode switch. Nothing else changes: the stack, the
      // window and the value count stay as they are.
      while (!stop) {
        const uint64_t at = r_.pos();
        if (!r_.TakeIf(0x94)) break;
        op_offset_ = at;
        op_ = 0x94;
        if (stack_.size() <= Fence()) [[unlikely]] return Underflow();
        CKPT_RETURN_IF_ERROR(MemoPut(memo_count_, stack_.back()));
      }
      if (window_obj_ != nullptr) CheckWindow();
      if (arena_->size() + kept_values_ + (window_obj_ != nullptr ? scratch_arena_->size() : 0) >
          opts_.max_values) {
        return Limit(StrCat("more than ", opts_.max_values, " values"));
      }
      if (stop) break;
    }
  } catch (const std::bad_alloc&) {
    return Limit("out of memory");
  } catch (const std::length_error&) {
    return Limit("out of memory");
  }
  if (window_obj_ != nullptr) {  // STOP inside the object: the result may point into it
    Escape();
    CloseWindow(false);
  }
  Unpickled out;
  out.arena = std::move(arena_);
  out.root = root_;
  out.end_offset = r_.pos();
  return out;
}

}  // namespace

Result<Unpickled> Unpickle(const ByteSource& src, uint64_t offset, const UnpickleOptions& options) {
  if (offset > src.Size()) {
    return OutOfRangeError(StrCat(src.Name(), ": pickle offset ", offset, " is past the end (",
                                  src.Size(), " bytes)"));
  }
  Machine m(src, offset, options);
  return m.Run();
}

}  // namespace ckpt::pickle
