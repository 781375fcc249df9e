// ckptkit._core: the nanobind module behind the `ckptkit` Python package.
//
// Thin by design (style.md §9): it opens a checkpoint through ckpt::OpenCheckpoint,
// hands metadata to Python as plain dicts/lists, and streams one tensor's bytes
// into a writable buffer that the Python side allocated (a numpy uint8 array).
// save_file goes the other way: Python hands over each tensor's contiguous bytes
// as a buffer-protocol object (zero-copy), the C++ writers stream them to disk.
// Every blocking C++ call runs with the GIL released. Every non-OK Status becomes
// a Python exception in exactly one place, RaiseStatus().
//
// Thread-safety: a Reader may be used from several Python threads; reads hold a
// shared_ptr to the C++ reader, so close() during a read in another thread only
// drops this object's reference and the read finishes safely.
#include <Python.h>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "ckpt/reshard.h"
#include "ckpt/dtype.h"
#include "checkpoint/dcp_writer.h"
#include "ckpt/engine.h"
#include "ckpt/env.h"
#include "ckpt/fault_env.h"
#include "ckpt/status.h"
#include "ckpt/writer.h"
#include "format/dcp/item.h"
#include "format/dcp/manifest.h"
#include "format/dcp/writer.h"
#include "util/strings.h"
#include "lib/inspect.h"
#include "lib/layout_map.h"

namespace nb = nanobind;

namespace ckpt {
namespace internal_python {
namespace {

// Exception classes created at module init (subclasses of builtins, so callers
// that catch ValueError / NotImplementedError keep working).
PyObject* g_corrupt_error = nullptr;      // ckptkit.CorruptCheckpointError(ValueError)
PyObject* g_unsupported_error = nullptr;  // ckptkit.UnsupportedError(NotImplementedError)

// What a NotFound is about: a missing key is a KeyError, a missing file a
// FileNotFoundError.
enum class Subject { kFile, kKey };

// The one Status -> exception mapping. REQUIRES: !status.ok(), GIL held.
[[noreturn]] void RaiseStatus(const Status& status, Subject subject = Subject::kFile) {
  PyObject* type = PyExc_RuntimeError;
  switch (status.code()) {
    case Code::kNotFound:
      type = subject == Subject::kKey ? PyExc_KeyError : PyExc_FileNotFoundError;
      break;
    case Code::kDataLoss:
    case Code::kOutOfRange:  // an offset or size in the file points outside it
      type = g_corrupt_error;
      break;
    case Code::kUnimplemented:
      type = g_unsupported_error;
      break;
    case Code::kInvalidArgument:
      type = PyExc_ValueError;
      break;
    case Code::kPermissionDenied:
      type = PyExc_PermissionError;
      break;
    case Code::kAlreadyExists:
      type = PyExc_FileExistsError;
      break;
    case Code::kResourceExhausted:  // disk full, quota, a limit on sizes
    case Code::kUnavailable:        // other I/O errors
      type = PyExc_OSError;
      break;
    case Code::kFailedPrecondition:
    case Code::kCancelled:
    case Code::kInternal:
    case Code::kOk:
      type = PyExc_RuntimeError;
      break;
  }
  if (type == PyExc_KeyError) {
    // KeyError's str() is the repr of its argument; keep the message readable
    // by passing it as the only argument anyway (the message is the point).
    nb::object msg = nb::str(status.message().c_str());
    PyErr_SetObject(type, msg.ptr());
  } else {
    PyErr_SetString(type, status.message().c_str());
  }
  throw nb::python_error();
}

// A ByteSink writing into a fixed buffer; refuses to write past its end.
class BufferSink final : public ByteSink {
 public:
  BufferSink(uint8_t* data, size_t size) : data_(data), size_(size) {}
  Status Append(std::string_view bytes) override {
    if (bytes.size() > size_ - pos_) {
      return InternalError("reader produced more bytes than the tensor's nbytes (" +
                           std::to_string(pos_ + bytes.size()) + " > " +
                           std::to_string(size_) + ")");
    }
    if (!bytes.empty()) std::memcpy(data_ + pos_, bytes.data(), bytes.size());
    pos_ += bytes.size();
    return OkStatus();
  }
  uint64_t Position() const override { return pos_; }

 private:
  uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

nb::dict TensorDict(const TensorInfo& t) {
  nb::dict d;
  d["key"] = t.key;
  d["dtype"] = std::string(DTypeName(t.dtype));
  d["itemsize"] = DTypeSize(t.dtype);
  nb::list shape;
  for (int64_t s : t.shape) shape.append(s);
  d["shape"] = nb::tuple(shape);
  d["nbytes"] = t.nbytes;
  d["file"] = t.file;
  d["storage"] = t.storage;
  if (t.stride.empty()) {
    d["stride"] = nb::none();
  } else {
    nb::list stride;
    for (int64_t s : t.stride) stride.append(s);
    d["stride"] = nb::tuple(stride);
  }
  d["storage_offset"] = t.storage_offset;
  d["data_offset"] = t.data_offset;
  d["requires_grad"] = t.requires_grad;
  d["is_parameter"] = t.is_parameter;
  nb::list chunks;
  for (const ChunkInfo& c : t.chunks) {
    nb::dict cd;
    nb::list off, sz;
    for (int64_t v : c.offsets) off.append(v);
    for (int64_t v : c.sizes) sz.append(v);
    cd["offsets"] = nb::tuple(off);
    cd["sizes"] = nb::tuple(sz);
    cd["file"] = c.file;
    cd["offset"] = c.offset;
    cd["length"] = c.length;
    chunks.append(cd);
  }
  d["chunks"] = chunks;
  return d;
}

// Python-visible handle on one open checkpoint.
class Reader {
 public:
  explicit Reader(std::shared_ptr<const CheckpointReader> r) : reader_(std::move(r)) {}

  std::shared_ptr<const CheckpointReader> Get() const {
    if (!reader_) {
      PyErr_SetString(PyExc_ValueError, "I/O operation on a closed checkpoint");
      throw nb::python_error();
    }
    return reader_;
  }
  void Close() { reader_.reset(); }
  bool closed() const { return reader_ == nullptr; }

  std::string format() const { return std::string(Get()->format()); }

  nb::list Tensors() const {
    auto r = Get();
    nb::list out;
    for (const TensorInfo& t : r->tensors()) out.append(TensorDict(t));
    return out;
  }

  nb::list Objects() const {
    auto r = Get();
    nb::list out;
    for (const ObjectInfo& o : r->objects()) {
      nb::dict d;
      d["key"] = o.key;
      d["type"] = o.type;
      d["repr"] = o.repr;
      d["opaque"] = o.opaque;
      out.append(d);
    }
    return out;
  }

  // Details() as JSON text; Python parses it with json.loads. Invalid UTF-8
  // from a file is replaced, never thrown (nlohmann's dump throws otherwise).
  std::string DetailsJson() const {
    auto r = Get();
    return r->Details().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  // The layout map's data (lib/layout_map.h: LayoutMapData of `inspect`'s
  // document for this checkpoint at `path`) as JSON text, what
  // `ckptkit inspect PATH --html` draws.
  std::string LayoutMapJson(const std::string& path) const {
    auto r = Get();
    std::string text;
    {
      nb::gil_scoped_release release;
      // Written a tensor at a time (no document of every chunk besides the text).
      nlohmann::json doc = cli::InspectDocument(path, *r, nullptr, /*with_tensors=*/false);
      cli::AddTensorsForLayoutFiles(*r, &doc);
      Status st = cli::WriteLayoutMap(doc, *r, /*html=*/false, [&](std::string_view s) {
        text.append(s);
        return OkStatus();
      });
      (void)st;  // appending to a string cannot fail
    }
    return text;
  }

  // Index of key; KeyError if absent.
  size_t Find(const std::string& key) const {
    auto r = Get();
    Result<size_t> i = r->Find(key);
    if (!i.ok()) RaiseStatus(i.status(), Subject::kKey);
    return *i;
  }

  // Streams tensor i into buf, which must hold exactly its nbytes.
  void ReadInto(size_t i, nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> buf) const {
    auto r = Get();
    if (i >= r->tensors().size()) {
      PyErr_SetString(PyExc_IndexError, "tensor index out of range");
      throw nb::python_error();
    }
    const TensorInfo& t = r->tensors()[i];
    if (buf.shape(0) != t.nbytes) {
      PyErr_Format(PyExc_ValueError, "buffer holds %zu bytes, tensor '%s' has %llu",
                   static_cast<size_t>(buf.shape(0)), t.key.c_str(),
                   static_cast<unsigned long long>(t.nbytes));
      throw nb::python_error();
    }
    Status s;
    {
      nb::gil_scoped_release release;
      BufferSink sink(buf.data(), buf.shape(0));
      s = r->ReadTensor(i, &sink);
      if (s.ok() && sink.Position() != t.nbytes) {
        s = DataLossError("tensor '" + t.key + "': reader produced " +
                          std::to_string(sink.Position()) + " of " + std::to_string(t.nbytes) +
                          " bytes");
      }
    }
    if (!s.ok()) RaiseStatus(s);
  }

  // Streams the box [start, start+count) of tensor i into buf (exactly its bytes).
  void ReadRegionInto(size_t i, const std::vector<int64_t>& start, const std::vector<int64_t>& count,
                      nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> buf) const {
    auto r = Get();
    if (i >= r->tensors().size()) {
      PyErr_SetString(PyExc_IndexError, "tensor index out of range");
      throw nb::python_error();
    }
    const TensorInfo& t = r->tensors()[i];
    uint64_t want = static_cast<uint64_t>(DTypeSize(t.dtype));
    for (int64_t c : count) want *= static_cast<uint64_t>(c < 0 ? 0 : c);
    if (buf.shape(0) != want) {
      PyErr_Format(PyExc_ValueError, "buffer holds %zu bytes, the region of '%s' has %llu",
                   static_cast<size_t>(buf.shape(0)), t.key.c_str(), static_cast<unsigned long long>(want));
      throw nb::python_error();
    }
    Status s;
    {
      nb::gil_scoped_release release;
      BufferSink sink(buf.data(), buf.shape(0));
      s = r->ReadTensorRegion(i, start, count, &sink);
      if (s.ok() && sink.Position() != want) {
        s = DataLossError("tensor '" + t.key + "': region read produced " + std::to_string(sink.Position()) +
                          " of " + std::to_string(want) + " bytes");
      }
    }
    if (!s.ok()) RaiseStatus(s);
  }

 private:
  std::shared_ptr<const CheckpointReader> reader_;
};

Reader Open(const std::string& path, const std::string& mode) {
  OpenOptions options;
  if (mode == "strict") {
    options.pickle_mode = PickleMode::kStrict;
  } else if (mode == "inspect") {
    options.pickle_mode = PickleMode::kInspect;
  } else {
    PyErr_Format(PyExc_ValueError, "mode must be 'strict' or 'inspect', got '%s'", mode.c_str());
    throw nb::python_error();
  }
  Result<std::unique_ptr<CheckpointReader>> r = InvalidArgumentError("not opened");
  {
    nb::gil_scoped_release release;
    r = OpenCheckpoint(path, options);
  }
  if (!r.ok()) RaiseStatus(r.status());
  return Reader(std::shared_ptr<const CheckpointReader>(std::move(*r)));
}

// Returns {"files": [...], "warnings": [...], "tensors": n, "bytes": n}.
// `to` and `max_shard_size` are read by ckpt::ParseTargetFormat and
// ckpt::ParseSize, as the CLI reads --to and --max-shard-size (the Python
// side passes an int size as its decimal text); None means one file.
nb::dict ConvertPy(const std::string& src, const std::string& dst, std::string_view to,
                   const std::optional<std::string>& max_shard_size, bool allow_opaque, int64_t thread_count,
                   const std::string& megatron_version, std::optional<int64_t> iteration,
                   const std::string& hf_config, const std::string& family, std::optional<int64_t> vocab_size,
                   const std::string& dtype, bool bin, int64_t tp, int64_t pp, int64_t ep, std::optional<int64_t> etp,
                   const std::string& megatron_layer_spec, int64_t make_vocab_size_divisible_by,
                   bool no_optimizer, bool direct_io) {
  ConvertOptions options;
  options.direct_io = direct_io;
  options.no_optimizer = no_optimizer;
  options.hf_config = hf_config;
  options.family = family;
  options.vocab_size = vocab_size;
  options.dtype = dtype;
  options.bin = bin;
  options.tp = tp;
  options.pp = pp;
  options.ep = ep;
  options.etp = etp;
  options.megatron_layer_spec = megatron_layer_spec;
  options.make_vocab_size_divisible_by = make_vocab_size_divisible_by;
  Result<TargetFormat> target = ParseTargetFormat(to);
  if (!target.ok()) RaiseStatus(target.status());
  options.to = *target;
  if (max_shard_size) {
    Result<uint64_t> size = ParseSize(*max_shard_size);
    if (!size.ok()) RaiseStatus(size.status());
    options.max_shard_size = *size;
  }
  options.allow_opaque = allow_opaque;
  options.thread_count = thread_count;
  options.megatron_version = megatron_version;
  options.iteration = iteration;
  Result<ConvertReport> report = InternalError("not run");
  {
    nb::gil_scoped_release release;
    report = Convert(src, dst, options);
  }
  if (!report.ok()) RaiseStatus(report.status());
  nb::dict d;
  nb::list files, warnings;
  for (const std::string& f : report->files) files.append(f);
  for (const std::string& w : report->warnings) warnings.append(w);
  d["files"] = files;
  d["warnings"] = warnings;
  d["tensors"] = report->tensors;
  d["bytes"] = report->bytes;
  d["data_files"] = report->data_files;
  d["direct_io_files"] = report->direct_io_files;
  return d;
}

nb::dict ReshardPy(const std::string& src, const std::string& dst, int64_t tp, int64_t pp, int64_t vpp, int64_t dp,
                   int64_t ep, int64_t etp, std::optional<int64_t> vocab_size, std::string_view to,
                   std::string_view optimizer_sharding, bool no_optimizer, const std::string& megatron_version, std::optional<int64_t> iteration,
                   int64_t thread_count, bool check, bool direct_io) {
  ReshardOptions o;
  o.direct_io = direct_io;
  o.tp = tp;
  o.pp = pp;
  o.vpp = vpp;
  o.dp = dp;
  o.ep = ep;
  o.etp = etp;
  o.vocab_size = vocab_size;
  if (to == "legacy") {
    o.to = ReshardFormat::kLegacy;
  } else if (to != "torch_dist") {
    RaiseStatus(InvalidArgumentError(StrCat("to: torch_dist or legacy, got \"", to, "\"")));
  }
  if (optimizer_sharding == "dp_reshardable") {
    o.optimizer_sharding = OptimizerSharding::kDpReshardable;
  } else if (optimizer_sharding != "fully_reshardable") {
    RaiseStatus(InvalidArgumentError(StrCat("optimizer_sharding: fully_reshardable or dp_reshardable, got \"",
                                            optimizer_sharding, "\"")));
  }
  o.no_optimizer = no_optimizer;
  o.megatron_version = megatron_version;
  o.iteration = iteration;
  o.thread_count = static_cast<int>(thread_count);
  o.check_only = check;
  Result<ReshardReport> report = InternalError("not run");
  {
    nb::gil_scoped_release release;
    report = Reshard(src, dst, o);
  }
  if (!report.ok()) RaiseStatus(report.status());
  nb::dict d;
  nb::list files, warnings;
  for (const std::string& f : report->files) files.append(f);
  for (const std::string& w : report->warnings) warnings.append(w);
  d["source_layout"] = report->source_layout;
  d["target_layout"] = report->target_layout;
  d["source_optimizer_sharding"] = report->optimizer;
  nb::list blockers;
  for (const std::string& b : report->load_blockers) blockers.append(b);
  d["loads_as_is"] = report->loads_as_is;
  d["load_blockers"] = blockers;
  d["source_padded_vocab"] = report->source_padded_vocab;
  d["target_padded_vocab"] = report->target_padded_vocab;
  d["files"] = files;
  d["warnings"] = warnings;
  d["tensors"] = report->tensors;
  d["bytes"] = report->bytes;
  d["data_files"] = report->data_files;
  d["direct_io_files"] = report->direct_io_files;
  return d;
}

// ckpt::ParseSize, for Python callers that want a size in bytes up front.
uint64_t ParseSizePy(std::string_view text) {
  Result<uint64_t> size = ParseSize(text);
  if (!size.ok()) RaiseStatus(size.status());
  return *size;
}

// Py_buffer views taken with the GIL held and released (in the destructor)
// with the GIL held again: declare it outside any gil_scoped_release scope.
class BufferViews {
 public:
  BufferViews() = default;
  BufferViews(const BufferViews&) = delete;
  BufferViews& operator=(const BufferViews&) = delete;
  ~BufferViews() {
    for (Py_buffer& v : views_) PyBuffer_Release(&v);
  }
  // Gets a C-contiguous read-only view of obj; raises (Python error) if obj
  // has no buffer or is not C-contiguous. views_ is reserved up front, so the
  // returned reference stays valid.
  const Py_buffer& Add(PyObject* obj) {
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS) != 0) throw nb::python_error();
    views_.push_back(v);
    return views_.back();
  }
  void Reserve(size_t n) { views_.reserve(n); }

 private:
  std::vector<Py_buffer> views_;
};

[[noreturn]] void RaiseValue(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw nb::python_error();
}

// Streams [data, data+size) in pieces, so no single write call is huge and
// the passes over each piece (zip CRC-32, XXH3, the copy into the direct
// file's aligned buffer) read it from L2 after the first: 256 KiB pieces took a
// third less CPU than 16 MiB ones (2 GiB written: 0.53 -> 0.35 user core-seconds).
Status AppendChunked(ByteSink* sink, const uint8_t* data, size_t size) {
  constexpr size_t kChunk = size_t{256} << 10;
  for (size_t off = 0; off < size; off += kChunk) {
    const size_t n = std::min(kChunk, size - off);
    CKPT_RETURN_IF_ERROR(
        sink->Append(std::string_view(reinterpret_cast<const char*>(data) + off, n)));
  }
  return OkStatus();
}

// save_file(path, format, entries, metadata): entries is a sequence of
// (key: str, dtype: torch dtype name, shape: sequence of int, data: buffer)
// whose buffer holds exactly numel * itemsize C-contiguous little-endian
// bytes. The Python package builds the entries; this only checks and writes.
void SaveFilePy(const std::string& path, const std::string& format, nb::sequence entries,
                std::optional<nb::dict> metadata) {
  const bool torch_format = format == "torch";
  if (!torch_format && format != "safetensors") {
    RaiseValue(PyExc_ValueError,
               "format must be 'safetensors' or 'torch', got '" + format + "'");
  }
  std::optional<std::map<std::string, std::string>> meta;
  if (metadata) {
    if (torch_format) RaiseValue(PyExc_ValueError, "metadata is only written by format='safetensors'");
    meta.emplace();
    for (auto [k, v] : *metadata) {
      if (!nb::isinstance<nb::str>(k) || !nb::isinstance<nb::str>(v)) {
        RaiseValue(PyExc_TypeError, "metadata keys and values must be str");
      }
      (*meta)[nb::cast<std::string>(k)] = nb::cast<std::string>(v);
    }
  }

  const size_t n = nb::len(entries);
  BufferViews views;  // outlives the GIL-released write below
  views.Reserve(n);
  std::vector<TensorToWrite> tensors;
  tensors.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    nb::object entry = entries[i];
    if (!nb::isinstance<nb::tuple>(entry) || nb::len(entry) != 4) {
      RaiseValue(PyExc_TypeError, "save_file entries must be (key, dtype, shape, buffer) tuples");
    }
    nb::tuple e = nb::borrow<nb::tuple>(entry);
    if (!nb::isinstance<nb::str>(e[0]) || !nb::isinstance<nb::str>(e[1])) {
      RaiseValue(PyExc_TypeError, "save_file entry: key and dtype must be str");
    }
    TensorToWrite t;
    t.key = nb::cast<std::string>(e[0]);
    const std::string dtype_name = nb::cast<std::string>(e[1]);
    std::optional<DType> dtype = DTypeFromName(dtype_name);
    if (!dtype) {
      RaiseValue(g_unsupported_error,
                 "tensor '" + t.key + "': dtype '" + dtype_name + "' is not supported");
    }
    t.dtype = *dtype;
    if (!nb::isinstance<nb::tuple>(e[2]) && !nb::isinstance<nb::list>(e[2])) {
      RaiseValue(PyExc_TypeError, "tensor '" + t.key + "': shape must be a tuple of ints");
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (nb::handle d : e[2]) {
      if (!nb::isinstance<nb::int_>(d)) RaiseValue(PyExc_TypeError, "tensor '" + t.key + "': shape must hold ints");
      const int64_t s = nb::cast<int64_t>(d);
      if (s < 0) RaiseValue(PyExc_ValueError, "tensor '" + t.key + "': negative dimension");
      t.shape.push_back(s);
      if (s != 0 && numel > UINT64_MAX / static_cast<uint64_t>(s)) overflow = true;
      numel *= static_cast<uint64_t>(s);
    }
    const uint64_t itemsize = static_cast<uint64_t>(DTypeSize(t.dtype));
    if (overflow || (numel != 0 && numel > UINT64_MAX / itemsize)) {
      RaiseValue(PyExc_ValueError, "tensor '" + t.key + "': shape overflows");
    }
    const uint64_t nbytes = numel * itemsize;
    const Py_buffer& view = views.Add(e[3].ptr());
    if (static_cast<uint64_t>(view.len) != nbytes) {
      RaiseValue(PyExc_ValueError, "tensor '" + t.key + "': buffer holds " +
                                       std::to_string(view.len) + " bytes, " + dtype_name +
                                       " shape needs " + std::to_string(nbytes));
    }
    const uint8_t* data = static_cast<const uint8_t*>(view.buf);
    const size_t size = static_cast<size_t>(view.len);
    t.write = [data, size](ByteSink* sink) { return AppendChunked(sink, data, size); };
    tensors.push_back(std::move(t));
  }

  Status s;
  {
    nb::gil_scoped_release release;
    s = torch_format ? WriteTorchFile(path, tensors) : WriteSafetensorsFile(path, tensors, meta);
  }
  if (!s.ok()) RaiseStatus(s);
}

// --- DCP storage plug-in (python/ckptkit/dcp.py) ------------------------------

// Parses a torch dtype name ("bfloat16", "torch.bfloat16") or raises.
DType DTypeOrRaise(const std::string& name, const std::string& what) {
  std::string_view n = name;
  if (n.substr(0, 6) == "torch.") n.remove_prefix(6);
  std::optional<DType> d = DTypeFromName(n);
  if (!d) RaiseValue(g_unsupported_error, what + ": dtype '" + name + "' is not supported");
  return *d;
}

// Shape (sequence of non-negative ints) -> vector, with overflow-checked nbytes.
std::vector<int64_t> ShapeOrRaise(nb::handle shape, DType dtype, const std::string& what, uint64_t* nbytes) {
  if (!nb::isinstance<nb::tuple>(shape) && !nb::isinstance<nb::list>(shape)) {
    RaiseValue(PyExc_TypeError, what + ": shape must be a tuple of ints");
  }
  std::vector<int64_t> out;
  uint64_t numel = 1;
  bool overflow = false;
  for (nb::handle d : shape) {
    if (!nb::isinstance<nb::int_>(d)) RaiseValue(PyExc_TypeError, what + ": shape must hold ints");
    const int64_t s = nb::cast<int64_t>(d);
    if (s < 0) RaiseValue(PyExc_ValueError, what + ": negative dimension");
    out.push_back(s);
    if (s != 0 && numel > UINT64_MAX / static_cast<uint64_t>(s)) overflow = true;
    numel *= static_cast<uint64_t>(s);
  }
  const uint64_t itemsize = static_cast<uint64_t>(DTypeSize(dtype));
  if (overflow || (numel != 0 && numel > UINT64_MAX / itemsize)) RaiseValue(PyExc_ValueError, what + ": shape overflows");
  *nbytes = numel * itemsize;
  return out;
}

// The Env the plug-ins write through: Env::Default(), or a FaultEnv over it
// once a test called _set_write_faults (never freed: files it opened may
// still be in use when the faults are cleared).
std::mutex g_fault_mu;
FaultEnv* g_fault_env = nullptr;

Env* WriteEnv() {
  std::lock_guard<std::mutex> l(g_fault_mu);
  return g_fault_env != nullptr ? static_cast<Env*>(g_fault_env) : Env::Default();
}

// _set_write_faults(space_limit=None, fail_nth_append=None, path_contains="")
// For tests of failure handling (ckptkit's own; not public API): from now on
// the plug-ins' writes in this process fail as a full disk does
// (ResourceExhausted, OSError ENOSPC) once `space_limit` more bytes were
// written, and/or the `fail_nth_append`-th append to a path containing
// `path_contains` fails as an I/O error (EIO). Replaces earlier faults.
void SetWriteFaultsPy(std::optional<uint64_t> space_limit, std::optional<uint64_t> fail_nth_append,
                      const std::string& path_contains) {
  std::lock_guard<std::mutex> l(g_fault_mu);
  if (g_fault_env == nullptr) g_fault_env = new FaultEnv(Env::Default());
  g_fault_env->ClearFaults();
  if (space_limit) g_fault_env->SetSpaceLimit(*space_limit);
  if (fail_nth_append) {
    if (*fail_nth_append == 0) RaiseValue(PyExc_ValueError, "_set_write_faults: fail_nth_append counts from 1");
    g_fault_env->FailNthAppend(*fail_nth_append, path_contains, UnavailableError("injected I/O error (EIO)"));
  }
}

// _clear_write_faults(): the plug-ins write to the disk unhindered again.
void ClearWriteFaultsPy() {
  std::lock_guard<std::mutex> l(g_fault_mu);
  if (g_fault_env != nullptr) g_fault_env->ClearFaults();
}

// shared_staging_path(dst) -> "<parent>/.<name>.ckptkit-shared": where every
// rank of a save into a destination that holds a checkpoint writes its files.
std::string SharedStagingPathPy(const std::string& dst) {
  Result<std::string> r = engine::SharedStagingPath(dst);
  if (!r.ok()) RaiseStatus(r.status());
  return *r;
}

// commit_dcp_folder(dst, staging, files, metadata, metadata_name=".metadata", prune=True)
//
// The coordinator's last step of a DCP save, once every rank's data files are
// written and synced: `metadata` (the pickled Metadata) is written as
// `metadata_name` atomically, then
// - staging None: the files went straight into `dst` (it held no
//   checkpoint); with prune, `*.distcp` files and ckptkit temporaries there
//   that `files` does not name (a killed earlier save's) are removed first;
// - staging: the folder every rank wrote into (shared_staging_path); what it
//   holds besides `files` is removed, `dst`'s other files (Megatron's
//   common.pt, a README) are carried over, and the folder is switched with
//   `dst` in one step (engine::FolderCommit): the old checkpoint stays
//   loadable until then and none of its files survive.
// Every name in `files` must exist in the folder (a rank that wrote
// elsewhere is an error, before anything is published).
void CommitDcpFolderPy(const std::string& dst, std::optional<std::string> staging, std::vector<std::string> files,
                       nb::bytes metadata, const std::string& metadata_name, bool prune) {
  std::string md(metadata.c_str(), metadata.size());
  Status s;
  {
    nb::gil_scoped_release release;
    s = [&]() -> Status {
      Env* env = WriteEnv();
      const std::string dir = staging ? *staging : dst;
      std::set<std::string, std::less<>> keep(files.begin(), files.end());
      keep.insert(metadata_name);
      for (const std::string& f : files) {  // each data file set's checksum manifest
        const std::string prefix = dcp::DataFilePrefix(f);
        if (!prefix.empty()) keep.insert(dcp::ManifestFileName(prefix));
      }
      for (const std::string& f : files) {
        if (!env->FileExists(JoinPath(dir, f))) {
          return FailedPreconditionError(StrCat("publishing ", dst, ": data file ", JoinPath(dir, f),
                                                " named by the metadata is missing"));
        }
      }
      if (staging) {
        CKPT_RETURN_IF_ERROR(engine::PruneFolder(env, dir, [&](std::string_view n) { return keep.count(n) > 0; }));
      } else if (prune) {
        CKPT_RETURN_IF_ERROR(engine::PruneFolder(env, dir, [&](std::string_view n) {
          const bool ours = internal_checkpoint::IsDcpFileName(n) || n.ends_with(".ckptkit-tmp");
          return !ours || keep.count(n) > 0;
        }));
      }
      CKPT_RETURN_IF_ERROR(WriteFileAtomically(env, JoinPath(dir, metadata_name),
                                               [&](WritableFile* out) { return out->Append(md); }),
                           StrCat("writing ", JoinPath(dst, metadata_name)));
      if (!staging) return OkStatus();
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<engine::FolderCommit> commit, engine::FolderCommit::Adopt(env, dst, dir));
      CKPT_RETURN_IF_ERROR(commit->CarryOver([&](std::string_view n) {
        return internal_checkpoint::IsDcpFileName(n) || (n.starts_with("__") && n.ends_with(".metadata"));
      }));
      return commit->Commit();
    }();
  }
  if (!s.ok()) RaiseStatus(s);
}

// StagingPool(capacity): engine::StagingPool for the plug-ins' staging
// (ckptkit.dcp.StorageWriter.stage). acquire(sizes, timeout_s) -> a list of
// writable numpy uint8 arrays, one per size, each owning its region: the
// region returns to the pool when the array (and every tensor viewing it,
// torch.from_numpy) is gone. Waits (GIL released) while the pool is full.
class StagingPoolPy {
 public:
  explicit StagingPoolPy(uint64_t capacity) {
    Result<std::shared_ptr<engine::StagingPool>> r = engine::StagingPool::Create(capacity);
    if (!r.ok()) RaiseStatus(r.status());
    pool_ = *r;
  }
  nb::list Acquire(std::vector<uint64_t> sizes, double timeout_s) {
    if (!(timeout_s >= 0)) RaiseValue(PyExc_ValueError, "StagingPool.acquire: timeout_s must be >= 0");
    Result<std::vector<std::unique_ptr<engine::StagingPool::Region>>> r =
        InvalidArgumentError("StagingPool.acquire: not run");
    {
      nb::gil_scoped_release release;
      r = pool_->Acquire(sizes, std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
    }
    if (!r.ok()) RaiseStatus(r.status());
    nb::list out;
    for (std::unique_ptr<engine::StagingPool::Region>& region : *r) {
      engine::StagingPool::Region* raw = region.release();
      nb::capsule owner(raw, [](void* p) noexcept { delete static_cast<engine::StagingPool::Region*>(p); });
      size_t shape[1] = {static_cast<size_t>(raw->size())};
      out.append(nb::cast(nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(raw->data(), 1, shape, owner)));
    }
    return out;
  }
  uint64_t capacity() const { return pool_->capacity(); }
  uint64_t in_use() const { return pool_->in_use(); }
  uint64_t peak() const { return pool_->peak(); }
  static uint64_t Footprint(std::vector<uint64_t> sizes) { return engine::StagingPool::Footprint(sizes); }

 private:
  std::shared_ptr<engine::StagingPool> pool_;
};

// write_dcp_files(dir, prefix, files) -> [[(relative_path, offset, length)], ...]
//
// files: a sequence (one per data file `<prefix><n>.distcp`) of sequences of
// items ("tensor", dtype, shape, buffer) or ("bytes", None, None, buffer),
// each file's items in the order they are to be stored. The caller (ckptkit.dcp)
// assigns items to files as torch's FileSystemWriter does. Each tensor is
// written as torch.save(tensor) of a contiguous tensor, each bytes item as
// its raw payload; through the engine's WriteFiles (one thread per file, each
// file atomically: temporary, fsync, rename; a failing file stops the others
// at their next append; on any failure the files this call published are
// removed), into the Env of WriteEnv(); then the checksum manifest of this
// call's items, `ckptkit-manifest<prefix>.json` (format/dcp/manifest.h).
// With direct_io the data files go around the page cache (O_DIRECT) where the
// file system allows. Returns (where each item went, per file, in the given
// order; how many files were written around the page cache). `dir` must exist.
nb::tuple WriteDcpFilesPy(const std::string& dir, const std::string& prefix, nb::sequence files_in, bool direct_io) {
  if (prefix.empty() || prefix.find('/') != std::string::npos || prefix.find('\0') != std::string::npos) {
    RaiseValue(PyExc_ValueError, "write_dcp_files: prefix '" + prefix + "' must be a non-empty file name part");
  }
  const size_t nfiles = nb::len(files_in);
  if (nfiles > static_cast<size_t>(dcp::kMaxThreadCount)) {
    RaiseValue(PyExc_ValueError, "write_dcp_files: " + std::to_string(nfiles) + " files is more than " +
                                     std::to_string(dcp::kMaxThreadCount));
  }
  size_t n = 0;
  for (size_t f = 0; f < nfiles; ++f) {
    nb::object file = files_in[f];
    if (!nb::isinstance<nb::sequence>(file)) RaiseValue(PyExc_TypeError, "write_dcp_files: files must be sequences of items");
    n += nb::len(file);
  }
  BufferViews views;  // outlives the GIL-released writes below
  views.Reserve(n);
  std::vector<dcp::EntryToWrite> entries;
  entries.reserve(n);
  std::vector<dcp::PlannedFile> files(nfiles);
  for (size_t f = 0; f < nfiles; ++f) {
    files[f].name = prefix + std::to_string(f) + ".distcp";
    nb::sequence file = nb::borrow<nb::sequence>(files_in[f]);
    const size_t m = nb::len(file);
    for (size_t j = 0; j < m; ++j) {
      nb::object obj = file[j];
      const std::string what = "write_dcp_files: " + files[f].name + " item " + std::to_string(j);
      if (!nb::isinstance<nb::tuple>(obj) || nb::len(obj) != 4) {
        RaiseValue(PyExc_TypeError, what + ": items must be (kind, dtype, shape, buffer) tuples");
      }
      nb::tuple t = nb::borrow<nb::tuple>(obj);
      if (!nb::isinstance<nb::str>(t[0])) RaiseValue(PyExc_TypeError, what + ": kind must be str");
      const std::string kind = nb::cast<std::string>(t[0]);
      dcp::EntryToWrite e;
      e.key = "item" + std::to_string(entries.size());  // unique; a rank may hold several chunks of one FQN
      const Py_buffer& view = views.Add(t[3].ptr());
      const uint8_t* data = static_cast<const uint8_t*>(view.buf);
      const size_t size = static_cast<size_t>(view.len);
      auto write = [data, size](ByteSink* sink) { return AppendChunked(sink, data, size); };
      dcp::PlannedItem item;
      item.entry = entries.size();
      if (kind == "bytes") {
        e.type = dcp::EntryType::kBytes;
        e.write_bytes = write;
      } else if (kind == "tensor") {
        if (!nb::isinstance<nb::str>(t[1])) RaiseValue(PyExc_TypeError, what + ": dtype must be str");
        e.type = dcp::EntryType::kTensor;
        e.dtype = DTypeOrRaise(nb::cast<std::string>(t[1]), what);
        uint64_t nbytes = 0;
        e.size = ShapeOrRaise(t[2], e.dtype, what, &nbytes);
        if (static_cast<uint64_t>(view.len) != nbytes) {
          RaiseValue(PyExc_ValueError, what + ": buffer holds " + std::to_string(view.len) +
                                           " bytes, the shape needs " + std::to_string(nbytes));
        }
        dcp::ChunkToWrite c;
        c.offsets.assign(e.size.size(), 0);
        c.sizes = e.size;
        c.write = write;
        e.chunks.push_back(std::move(c));
        item.chunk = 0;
        item.size = nbytes;
      } else {
        RaiseValue(PyExc_ValueError, what + ": kind must be 'tensor' or 'bytes', got '" + kind + "'");
      }
      entries.push_back(std::move(e));
      files[f].items.push_back(item);
    }
  }

  std::vector<std::vector<dcp::WrittenItem>> per_file(nfiles);
  size_t direct_io_files = 0;
  Status s;
  {
    nb::gil_scoped_release release;
    s = [&]() -> Status {
      // Validates every entry (dtype plannable, sizes, callbacks); the plan itself is the caller's.
      dcp::DcpWriteOptions check;
      CKPT_RETURN_IF_ERROR(dcp::PlanDcpWrite(entries, check).status(), "write_dcp_files");
      // One thread per file, as torch's FileSystemWriter; then the call's checksum manifest.
      CKPT_ASSIGN_OR_RETURN(internal_checkpoint::DcpDataFiles data,
                            internal_checkpoint::WriteDcpDataFiles(WriteEnv(), dir, dir, entries, files,
                                                                   static_cast<int64_t>(nfiles), direct_io));
      per_file = std::move(data.items);
      direct_io_files = data.direct_io_files;
      return OkStatus();
    }();
  }
  if (!s.ok()) RaiseStatus(s);
  nb::list out;
  for (size_t f = 0; f < nfiles; ++f) {
    if (per_file[f].size() != files[f].items.size()) {
      RaiseValue(PyExc_RuntimeError, "write_dcp_files: " + files[f].name + ": not every item was written");
    }
    nb::list placed;
    for (const dcp::WrittenItem& w : per_file[f]) placed.append(nb::make_tuple(w.relative_path, w.offset, w.length));
    out.append(placed);
  }
  return nb::make_tuple(out, direct_io_files);
}

std::vector<std::string> TransformsOrRaise(nb::handle h, const std::string& what) {
  std::vector<std::string> out;
  if (h.is_none()) return out;
  if (!nb::isinstance<nb::tuple>(h) && !nb::isinstance<nb::list>(h)) {
    RaiseValue(PyExc_TypeError, what + ": transforms must be a sequence of str or None");
  }
  for (nb::handle t : h) {
    if (!nb::isinstance<nb::str>(t)) RaiseValue(PyExc_TypeError, what + ": transforms must hold str");
    out.push_back(nb::cast<std::string>(t));
  }
  return out;
}

Result<std::shared_ptr<const ByteSource>> OpenDataFile(const std::string& path) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, Env::Default()->NewRandomAccessFile(path));
  return std::shared_ptr<const ByteSource>(std::move(f));
}

// read_dcp_tensors(path, requests): requests is a sequence of
// (fqn, offset, length, transforms, dtype, shape, buffer); each item of the
// data file at `path` must be a torch.save archive of exactly one tensor of
// that dtype and shape, whose row-major bytes are decoded into buffer
// (writable, C-contiguous, exactly numel * itemsize bytes). One open of the
// file; the GIL is released while reading.
void ReadDcpTensorsPy(const std::string& path, nb::sequence requests) {
  struct Req {  // item views entry.key, transforms and the path (reqs is never resized)
    dcp::Entry entry;
    std::vector<std::string> transforms;
    dcp::StorageItem item;
    uint8_t* data = nullptr;
    size_t size = 0;
  };
  const size_t n = nb::len(requests);
  std::vector<Py_buffer> views;
  views.reserve(n);
  struct Release {
    std::vector<Py_buffer>* v;
    ~Release() {
      for (Py_buffer& b : *v) PyBuffer_Release(&b);
    }
  } release_views{&views};
  std::vector<Req> reqs(n);
  for (size_t i = 0; i < n; ++i) {
    nb::object obj = requests[i];
    if (!nb::isinstance<nb::tuple>(obj) || nb::len(obj) != 7) {
      RaiseValue(PyExc_TypeError,
                 "read_dcp_tensors: requests must be (fqn, offset, length, transforms, dtype, shape, buffer) tuples");
    }
    nb::tuple t = nb::borrow<nb::tuple>(obj);
    Req& r = reqs[i];
    r.entry.key = nb::cast<std::string>(t[0]);
    const std::string what = "read_dcp_tensors: '" + r.entry.key + "'";
    const int64_t off = nb::cast<int64_t>(t[1]);
    const int64_t len = nb::cast<int64_t>(t[2]);
    if (off < 0 || len < 0) RaiseValue(PyExc_ValueError, what + ": negative offset or length");
    r.item.fqn = r.entry.key;
    r.item.relative_path = path;
    r.item.offset_in_file = static_cast<uint64_t>(off);
    r.item.length = static_cast<uint64_t>(len);
    r.transforms = TransformsOrRaise(t[3], what);
    r.item.transforms = r.transforms;
    r.entry.dtype = DTypeOrRaise(nb::cast<std::string>(t[4]), what);
    uint64_t nbytes = 0;
    r.entry.size = ShapeOrRaise(t[5], r.entry.dtype, what, &nbytes);
    Py_buffer v;
    if (PyObject_GetBuffer(t[6].ptr(), &v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) throw nb::python_error();
    views.push_back(v);
    if (static_cast<uint64_t>(v.len) != nbytes) {
      RaiseValue(PyExc_ValueError, what + ": buffer holds " + std::to_string(v.len) + " bytes, the chunk needs " +
                                       std::to_string(nbytes));
    }
    r.data = static_cast<uint8_t*>(v.buf);
    r.size = static_cast<size_t>(v.len);
  }
  Status s;
  {
    nb::gil_scoped_release release;
    s = [&]() -> Status {
      if (reqs.empty()) return OkStatus();
      CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, OpenDataFile(path));
      for (Req& r : reqs) {
        const std::vector<int64_t> origin(r.entry.size.size(), 0);
        dcp::Chunk c;
        c.offsets = origin;
        c.sizes = r.entry.size;
        CKPT_ASSIGN_OR_RETURN(dcp::ChunkArchive a, dcp::OpenChunk(file, r.entry, c, r.item));
        BufferSink sink(r.data, r.size);
        CKPT_RETURN_IF_ERROR(a.archive->ReadTensor(*a.tensor, &sink), StrCat(path, ": ", Quote(r.entry.key)));
        if (sink.Position() != r.size) {
          return DataLossError(StrCat(path, ": ", Quote(r.entry.key), ": archive produced ", sink.Position(), " of ",
                                      r.size, " bytes"));
        }
      }
      return OkStatus();
    }();
  }
  if (!s.ok()) RaiseStatus(s);
}

// read_dcp_bytes(path, offset, length, transforms) -> bytes: a bytes item's
// payload after its transforms.
nb::bytes ReadDcpBytesPy(const std::string& path, int64_t offset, int64_t length, nb::handle transforms) {
  if (offset < 0 || length < 0) RaiseValue(PyExc_ValueError, "read_dcp_bytes: negative offset or length");
  dcp::StorageItem item;
  item.relative_path = path;
  item.offset_in_file = static_cast<uint64_t>(offset);
  item.length = static_cast<uint64_t>(length);
  const std::vector<std::string> kept = TransformsOrRaise(transforms, "read_dcp_bytes");
  item.transforms = kept;
  std::string out;
  Status s;
  {
    nb::gil_scoped_release release;
    s = [&]() -> Status {
      CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, OpenDataFile(path));
      CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> bytes, dcp::OpenItemBytes(file, item));
      try {
        out.resize(bytes->Size());
      } catch (const std::bad_alloc&) {
        return ResourceExhaustedError(StrCat(path, " @ ", offset, ": cannot allocate ", bytes->Size(), " bytes"));
      }
      return bytes->ReadAt(0, out.size(), out.data());
    }();
  }
  if (!s.ok()) RaiseStatus(s);
  return nb::bytes(out.data(), out.size());
}

}  // namespace
}  // namespace internal_python
}  // namespace ckpt

NB_MODULE(_core, m) {
  using namespace ckpt::internal_python;
  m.doc() = "ckptkit C++ core (use the `ckptkit` package, not this module)";

  g_corrupt_error = PyErr_NewExceptionWithDoc(
      "ckptkit.CorruptCheckpointError",
      "The checkpoint's bytes are corrupt, truncated or inconsistent.", PyExc_ValueError, nullptr);
  g_unsupported_error = PyErr_NewExceptionWithDoc(
      "ckptkit.UnsupportedError",
      "The checkpoint uses a feature ckptkit does not support (a version, a dtype, a pickle "
      "global refused in strict mode).",
      PyExc_NotImplementedError, nullptr);
  if (!g_corrupt_error || !g_unsupported_error) throw nb::python_error();
  m.attr("CorruptCheckpointError") = nb::borrow(g_corrupt_error);
  m.attr("UnsupportedError") = nb::borrow(g_unsupported_error);

  nb::class_<Reader>(m, "Reader")
      .def_prop_ro("format", &Reader::format)
      .def_prop_ro("closed", &Reader::closed)
      .def("tensors", &Reader::Tensors)
      .def("objects", &Reader::Objects)
      .def("details_json", &Reader::DetailsJson)
      .def("layout_map_json", &Reader::LayoutMapJson, nb::arg("path"))
      .def("find", &Reader::Find, nb::arg("key"))
      .def("read_into", &Reader::ReadInto, nb::arg("index"), nb::arg("buffer"))
      .def("read_region_into", &Reader::ReadRegionInto, nb::arg("index"), nb::arg("start"), nb::arg("count"),
           nb::arg("buffer"))
      .def("close", &Reader::Close);

  m.def("open", &Open, nb::arg("path"), nb::arg("mode") = "strict");
  m.def("convert", &ConvertPy, nb::arg("src"), nb::arg("dst"), nb::arg("to"),
        nb::arg("max_shard_size").none() = nb::none(), nb::arg("allow_opaque") = false,
        nb::arg("thread_count") = 1, nb::arg("megatron_version") = "", nb::arg("iteration").none() = nb::none(),
        nb::arg("hf_config") = "", nb::arg("family") = "", nb::arg("vocab_size").none() = nb::none(),
        nb::arg("dtype") = "", nb::arg("bin") = false, nb::arg("tp") = 1, nb::arg("pp") = 1, nb::arg("ep") = 1,
        nb::arg("etp").none() = nb::none(), nb::arg("megatron_layer_spec") = "local",
        nb::arg("make_vocab_size_divisible_by") = 128, nb::arg("no_optimizer") = false,
        nb::arg("direct_io") = true);
  m.def("reshard", &ReshardPy, nb::arg("src"), nb::arg("dst"), nb::arg("tp") = 0, nb::arg("pp") = 0,
        nb::arg("vpp") = 0, nb::arg("dp") = 0, nb::arg("ep") = 0, nb::arg("etp") = 0,
        nb::arg("vocab_size").none() = nb::none(), nb::arg("to") = "torch_dist",
        nb::arg("optimizer_sharding") = "fully_reshardable", nb::arg("no_optimizer") = false,
        nb::arg("megatron_version") = "", nb::arg("iteration").none() = nb::none(),
        nb::arg("thread_count") = 1, nb::arg("check") = false, nb::arg("direct_io") = true);
  m.def("parse_size", &ParseSizePy, nb::arg("text"));
  m.def("save_file", &SaveFilePy, nb::arg("path"), nb::arg("format"), nb::arg("entries"),
        nb::arg("metadata").none() = nb::none());
  m.def("write_dcp_files", &WriteDcpFilesPy, nb::arg("dir"), nb::arg("prefix"), nb::arg("files"),
        nb::arg("direct_io") = true);
  m.def("shared_staging_path", &SharedStagingPathPy, nb::arg("dst"));
  nb::class_<StagingPoolPy>(m, "StagingPool")
      .def(nb::init<uint64_t>(), nb::arg("capacity"))
      .def("acquire", &StagingPoolPy::Acquire, nb::arg("sizes"), nb::arg("timeout_s"))
      .def_prop_ro("capacity", &StagingPoolPy::capacity)
      .def_prop_ro("in_use", &StagingPoolPy::in_use)
      .def_prop_ro("peak", &StagingPoolPy::peak)
      .def_static("footprint", &StagingPoolPy::Footprint, nb::arg("sizes"));
  m.def("commit_dcp_folder", &CommitDcpFolderPy, nb::arg("dst"), nb::arg("staging").none(), nb::arg("files"),
        nb::arg("metadata"), nb::arg("metadata_name") = ".metadata", nb::arg("prune") = true);
  m.def("_set_write_faults", &SetWriteFaultsPy, nb::arg("space_limit").none() = nb::none(),
        nb::arg("fail_nth_append").none() = nb::none(), nb::arg("path_contains") = "");
  m.def("_clear_write_faults", &ClearWriteFaultsPy);
  m.def("read_dcp_tensors", &ReadDcpTensorsPy, nb::arg("path"), nb::arg("requests"));
  m.def("read_dcp_bytes", &ReadDcpBytesPy, nb::arg("path"), nb::arg("offset"), nb::arg("length"),
        nb::arg("transforms").none() = nb::none());
}
