// OpenCheckpoint: sniff a path and hand it to the reader for its format.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/legacy_reader.h"
#include "checkpoint/readers.h"
#include "util/box.h"
#include "util/strings.h"

namespace ckpt {

Result<size_t> CheckpointReader::Find(std::string_view key) const {
  const auto& ts = tensors();
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].key == key) return i;
  }
  return NotFoundError(StrCat("no tensor named ", Quote(key)));
}

Status CheckpointReader::ReadTensorRegion(size_t i, std::span<const int64_t> start,
                                          std::span<const int64_t> count, ByteSink* out) const {
  const TensorInfo& t = tensors()[i];
  Box region{{start.begin(), start.end()}, {count.begin(), count.end()}};
  CKPT_RETURN_IF_ERROR(CheckBoxInside(region, t.shape, StrCat("region of ", Quote(t.key))));
  RegionSink sink(Box::Whole(t.shape), region, DTypeSize(t.dtype), out);
  CKPT_RETURN_IF_ERROR(ReadTensor(i, &sink));
  return sink.Finish().WithContext(StrCat("tensor ", Quote(t.key)));
}

namespace internal_checkpoint {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

Result<std::string> ReadSmall(Env* env, const std::string& path, uint64_t max) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(path));
  if (f->Size() > max) {
    return ResourceExhaustedError(StrCat(path, ": ", f->Size(), " bytes, more than the ", max, " expected"));
  }
  std::string s(f->Size(), '\0');
  CKPT_RETURN_IF_ERROR(f->ReadAt(0, s.size(), s.data()));
  return s;
}

namespace {

// Files a folder may hold, in the order they are preferred.
constexpr const char* kFolderCandidates[] = {
    "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
    "pytorch_model.bin",
};

}  // namespace

Result<std::unique_ptr<CheckpointReader>> OpenFile(const std::string& path,
                                                   const OpenOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  if (EndsWith(path, ".index.json")) return OpenSharded(path, options);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, env->NewRandomAccessFile(path));
  std::shared_ptr<const ByteSource> src(std::move(file));
  char head[16] = {};
  size_t n = static_cast<size_t>(std::min<uint64_t>(src->Size(), sizeof(head)));
  CKPT_RETURN_IF_ERROR(src->ReadAt(0, n, head));
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) {
    return OpenTorch(std::move(src), options.pickle_mode);
  }
  if (n >= 9) {
    size_t i = 8;
    while (i < n && head[i] == ' ') ++i;
    if (i < n && head[i] == '{') return OpenSafetensors(std::move(src));
  }
  if (n >= 2 && static_cast<unsigned char>(head[0]) == 0x80 && head[1] <= 5) {
    return UnimplementedError(StrCat(
        path, ": a legacy (pre-1.6, non-zip) torch.save file; re-save it with a current torch "
              "(torch.save uses the zip format since 1.6)"));
  }
  if (EndsWith(path, ".safetensors")) return OpenSafetensors(std::move(src));
  if (src->Size() == 0) return InvalidArgumentError(StrCat(path, ": empty file"));
  return InvalidArgumentError(StrCat(
      path, ": unknown format: not a torch.save zip (no PK\\x03\\x04 magic), not safetensors "
            "(no JSON header after the 8-byte length), not an *.index.json"));
}

}  // namespace internal_checkpoint

Result<std::unique_ptr<CheckpointReader>> OpenCheckpoint(const std::string& path,
                                                         const OpenOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  if (env->IsDirectory(path)) {
    for (const char* name : internal_checkpoint::kFolderCandidates) {
      std::string p = JoinPath(path, name);
      if (env->FileExists(p)) return internal_checkpoint::OpenFile(p, options);
    }
    // A Megatron-LM root: follow the tracker to the iteration folder.
    std::string dir = path;
    std::optional<int64_t> tracker_iteration;
    if (internal_checkpoint::IsMegatronRoot(env, path)) {
      CKPT_ASSIGN_OR_RETURN(internal_checkpoint::MegatronIteration it,
                            internal_checkpoint::ResolveMegatronRoot(env, path));
      dir = std::move(it.dir);
      tracker_iteration = it.iteration;
    }
    const bool dcp_files = env->FileExists(JoinPath(dir, ".metadata")) || env->FileExists(JoinPath(dir, "metadata.json"));
    // A Megatron-LM legacy (--ckpt-format torch) iteration folder: mp_rank_* folders, no DCP files.
    if (!dcp_files && internal_checkpoint::IsLegacyIterationDir(env, dir)) {
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<internal_checkpoint::LegacyReader> r,
                            internal_checkpoint::LegacyReader::Open(dir, tracker_iteration, options));
      return std::unique_ptr<CheckpointReader>(std::move(r));
    }
    if (dcp_files) {
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<internal_checkpoint::DcpReader> r,
                            internal_checkpoint::DcpReader::Open(dir, options));
      if (env->FileExists(JoinPath(dir, "metadata.json"))) {
        CKPT_RETURN_IF_ERROR(
            internal_checkpoint::AttachMegatron(r.get(), env, tracker_iteration));
      }
      return std::unique_ptr<CheckpointReader>(std::move(r));
    }
    // Otherwise a folder with exactly one checkpoint-looking file means that file.
    CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env->GetChildren(path));
    std::vector<std::string> found;
    bool has_distcp = false;
    for (const std::string& c : children) {
      has_distcp = has_distcp || internal_checkpoint::EndsWith(c, ".distcp");
      if (internal_checkpoint::EndsWith(c, ".index.json") ||
          internal_checkpoint::EndsWith(c, ".safetensors") || internal_checkpoint::EndsWith(c, ".pt") ||
          internal_checkpoint::EndsWith(c, ".pth") || internal_checkpoint::EndsWith(c, ".bin")) {
        // A lone shard ("model-00001-of-00002.safetensors") is part of a set, not a checkpoint.
        if (c.find("-of-") != std::string::npos) continue;
        if (!env->IsDirectory(JoinPath(path, c))) found.push_back(c);
      }
    }
    if (found.size() == 1) return internal_checkpoint::OpenFile(JoinPath(path, found[0]), options);
    if (found.size() > 1) {
      return InvalidArgumentError(StrCat(path, ": folder holds several checkpoint files (",
                                         fmt::format("{}", fmt::join(found, ", ")),
                                         "); name the one to open"));
    }
    if (has_distcp) {
      // DCP data files without .metadata: DcpReader reports the unfinished save (DataLoss).
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<internal_checkpoint::DcpReader> r,
                            internal_checkpoint::DcpReader::Open(path, options));
      return std::unique_ptr<CheckpointReader>(std::move(r));
    }
    return NotFoundError(StrCat(path, ": folder holds no checkpoint ckptkit knows (looked for "
                                      "model.safetensors[.index.json], pytorch_model.bin[.index.json], "
                                      "or a single *.safetensors / *.pt / *.pth / *.bin / *.index.json)"));
  }
  if (!env->FileExists(path)) return NotFoundError(StrCat(path, ": no such file or folder"));
  return internal_checkpoint::OpenFile(path, options);
}

}  // namespace ckpt
