// The model layer: what a Megatron-Core GPT checkpoint *means*.
//
// Format code (format/, checkpoint/) knows files: keys, chunks, dtypes. This
// header knows models: how Megatron lays a GPT model out over TP/PP/VPP/EP
// ranks (ParallelLayout), what the model is (ModelConfig, derived from the
// `args` Namespace that Megatron-LM stores in the common state), and which
// Megatron tensor is which HuggingFace tensor (FamilyTable: per-family data
// tables plus a small set of named transforms). Convert code
// (src/convert/) plans its reads and writes from here and never spells a
// Megatron or HF parameter name itself. What `inspect` says about a
// torch_dist checkpoint's model (sizes from args and shapes, where they
// disagree, a family guess) is made in this layer too, by the internal
// src/model/summary.h; format/megatron reports only the parallel layout, the
// optimizer and the keys.
//
// Everything here is pure: no I/O, no tensor data. The plans describe each
// output tensor as rows gathered from source tensors (TensorPlan), which the
// caller streams.
//
// Sources of truth: megatron-core 0.16.1/0.19.2 (GPTModel, TransformerLayer,
// SelfAttention, MLP, experts.py sharded_state_dict, arguments.py) and
// transformers 5.x modeling files; docs/format.md §9 has the rules with a
// worked example, checked by tests/interop/test_hf_convert.py against the
// real frameworks' forward passes.
//
// Thread-safety: all functions are pure; tables are immutable.
#ifndef CKPT_MODEL_H_
#define CKPT_MODEL_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt::model {

// ---------------------------------------------------------------------------
// Parallel layout

// Layers [begin, end) held by one (pipeline rank, virtual stage).
struct LayerRange {
  int64_t pp_rank = 0;
  int64_t vp_stage = 0;
  int64_t begin = 0;
  int64_t end = 0;
};

// How a model is split over ranks. World = tp * cp * pp * dp; the expert
// grid reuses the same ranks: ep * etp must divide tp * cp * dp (Megatron's
// RankGenerator for experts), and etp defaults to tp.
struct ParallelLayout {
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t vpp = 1;  // virtual stages per pipeline rank (1: no interleaving)
  int64_t dp = 1;
  int64_t cp = 1;
  int64_t ep = 1;
  int64_t etp = 1;
  // Uneven pipelines (args.decoder_first/last_pipeline_num_layers); unset:
  // an even split.
  std::optional<int64_t> first_stage_layers;
  std::optional<int64_t> last_stage_layers;

  int64_t world_size() const { return tp * cp * pp * dp; }

  // Checks every size is >= 1 and the expert grid fits the dense grid.
  // Errors: InvalidArgument naming the size (e.g. "ep=3 * etp=1 does not
  // divide tp*cp*dp=4").
  Status Validate() const;

  // Layers of every (pp rank, virtual stage), in Megatron's order
  // (get_transformer_layer_offset: stage s of rank r holds the chunk
  // s * pp + r of the model). Errors: InvalidArgument when num_layers does
  // not split (naming num_layers, pp, vpp and the uneven sizes).
  Result<std::vector<LayerRange>> Stages(int64_t num_layers) const;
};

// "TP=2 PP=2 DP=1 EP=2 ETP=1" (only sizes > 1 besides TP/PP/DP).
std::string LayoutString(const ParallelLayout& l);

// ---------------------------------------------------------------------------
// Model configuration

enum class Family {
  kLlama,     // Llama 2/3 (and any GQA/MHA SwiGLU RMSNorm rope GPT)
  kMistral,   // as Llama, with a sliding window where configured
  kQwen2,     // Qwen2 / Qwen2.5: QKV bias
  kQwen3,     // QK layernorm, head_dim independent of hidden/heads
  kMixtral,   // MoE, per-expert w1/w2/w3
  kQwen3Moe,  // MoE with QK layernorm
  kGpt2,      // learned positions, LayerNorm, GeLU, biases, Conv1D weights
};
inline constexpr int kFamilyCount = 7;

// "llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "gpt2" (the HF model_type).
std::string_view FamilyName(Family f);
// The HF architecture: "LlamaForCausalLM", ..., "GPT2LMHeadModel".
std::string_view FamilyArchitecture(Family f);
// Inverse of FamilyName; also accepts the HF architecture ("LlamaForCausalLM").
// Errors: InvalidArgument listing the known families.
Result<Family> ParseFamily(std::string_view name);

// Largest size (layers, hidden, heads, vocabulary, ...) a config may hold:
// sizes come from files, and every product of two must fit in int64.
inline constexpr int64_t kMaxModelSize = int64_t{1} << 31;

enum class Norm { kRMSNorm, kLayerNorm };
enum class Activation { kSwiGLU, kGelu, kGeluTanh, kReLU, kSquaredReLU };
enum class Positions { kRope, kLearned, kNone };

struct ModelConfig {
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t ffn_hidden_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_query_groups = 0;  // = heads without GQA
  int64_t kv_channels = 0;       // head dim; hidden / heads unless set
  int64_t padded_vocab_size = 0;  // rows of the embedding as stored
  std::optional<int64_t> vocab_size;  // the tokenizer's (HF) size, when known
  int64_t make_vocab_size_divisible_by = 128;
  int64_t max_position_embeddings = 0;
  Norm norm = Norm::kRMSNorm;
  double norm_epsilon = 1e-5;
  bool apply_layernorm_1p = false;  // stored gamma is (w - 1)
  Activation activation = Activation::kSwiGLU;
  bool add_bias_linear = false;  // biases on every linear layer
  bool add_qkv_bias = false;     // bias on linear_qkv only (Qwen2)
  bool qk_layernorm = false;
  Positions positions = Positions::kRope;
  double rotary_base = 10000;
  double rotary_percent = 1.0;
  bool rotary_interleaved = false;
  bool use_rope_scaling = false;  // Llama 3.1 scaling (low 1, high 4, original 8192)
  double rope_scaling_factor = 8.0;
  std::optional<double> seq_len_interpolation_factor;  // linear rope scaling
  std::optional<int64_t> sliding_window;                // HF sliding_window (W)
  bool tied_embeddings = true;  // !args.untie_embeddings_and_output_weights
  // MoE (num_experts == 0: dense).
  int64_t num_experts = 0;
  int64_t moe_router_topk = 2;
  int64_t moe_ffn_hidden_size = 0;
  int64_t moe_shared_expert_intermediate_size = 0;
  bool moe_router_pre_softmax = false;
  bool moe_grouped_gemm = false;
  std::string moe_router_dtype;  // "" (params dtype), "fp32", "fp64"
  DType params_dtype = DType::kFloat32;

  bool gated() const { return activation == Activation::kSwiGLU; }
  bool moe() const { return num_experts > 0; }
  // Rows of linear_qkv: (heads + 2 * groups) * kv_channels.
  int64_t qkv_rows() const { return (num_attention_heads + 2 * num_query_groups) * kv_channels; }
  // Megatron-LM's padding: ceil(vocab / (divisor * tp)) * divisor * tp.
  int64_t PaddedVocab(int64_t vocab, int64_t tp) const;

  // Checks internal consistency (positive sizes, heads divisible by groups,
  // MoE fields, ...). Errors: InvalidArgument naming the field.
  Status Validate() const;
};

// The family a config most likely is when nothing else says: MoE + QK norm
// -> qwen3_moe, MoE -> mixtral, learned positions -> gpt2, QK norm -> qwen3,
// QKV bias -> qwen2, a sliding window -> mistral, else llama.
Family GuessFamily(const ModelConfig& c);

// ---------------------------------------------------------------------------
// Megatron-LM args

// One argparse value as Megatron-LM stores it.
struct ArgValue {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTorchDType };
  Kind kind = Kind::kNone;
  int64_t i = 0;  // kBool, kInt
  double f = 0;   // kFloat
  std::string s;  // kString; kTorchDType: "bfloat16", "float16", "float32"
};

// The `args` fields (megatron/training/arguments.py names) that describe `c`
// trained at layout `l`, in a stable order: what a checkpoint written for
// Megatron-LM needs for its checks (check_checkpoint_args) and what
// ConfigFromArgs reads back.
std::vector<std::pair<std::string, ArgValue>> MegatronArgs(const ModelConfig& c, const ParallelLayout& l);

// ---------------------------------------------------------------------------
// HF config.json

// config.json for `c` as `family`, in transformers' field names (v4-style
// rope_theta/rope_scaling, read by v4 and v5 alike). `dtype` is the weights'
// dtype. Errors: InvalidArgument when the config cannot be expressed in the
// family (e.g. Llama with LayerNorm, vocab_size unknown, an interleaved
// rope) naming the field; the caller fills vocab_size first.
Result<nlohmann::ordered_json> MakeHfConfig(const ModelConfig& c, Family family, DType dtype);

// generation_config.json, when derivable (token ids from `reference`, a
// user's config.json); nullopt when there is nothing to say.
std::optional<nlohmann::ordered_json> MakeGenerationConfig(const nlohmann::json& reference);

// Reads an HF config.json (v4 or v5 layout) into a ModelConfig and its family.
// Errors: InvalidArgument naming the field that is missing or unsupported
// (unknown architecture, rope_scaling other than llama3/linear, ...).
struct HfModel {
  Family family = Family::kLlama;
  ModelConfig config;
};
Result<HfModel> ParseHfConfig(const nlohmann::json& cfg);

// Cross-checks a user's --hf-config against the checkpoint's own config
// (sizes, heads, groups, norm, ...): every disagreement, as text naming the
// field and both values. Empty means consistent.
std::vector<std::string> CompareConfigs(const ModelConfig& from_args, const ModelConfig& from_hf);

// ---------------------------------------------------------------------------
// Tensor plans

// Rows [row_begin, row_end) of source tensor `source` (an index into the
// plan's source list) taken at the leading indices `index` (layer, expert)
// with every trailing dimension whole. `source < 0` stands for zero rows
// (vocabulary padding).
struct RowSlice {
  int source = -1;
  std::vector<int64_t> index;
  int64_t row_begin = 0;
  int64_t row_end = 0;
};

// One output tensor: the concatenation along dim 0 of `rows`, then the
// transforms. `transpose_sources`: each source is a 2-D tensor read whole and
// transposed before rows are taken (HF Conv1D -> Megatron); `transpose`: the
// gathered 2-D result is transposed (Megatron -> HF Conv1D); `add`: added to
// every element (apply_layernorm_1p: +1 on export, -1 on import).
struct TensorPlan {
  std::string name;
  std::vector<int64_t> shape;  // the output's shape (of one indexed slice when out_index is set)
  std::vector<RowSlice> rows;
  bool transpose_sources = false;
  bool transpose = false;
  double add = 0;
  // The leading index this plan fills of a stacked output (layer[, expert])
  // and that output's whole shape; out_index empty: a whole tensor.
  std::vector<int64_t> out_index;
  std::vector<int64_t> full_shape;
  std::string why;  // the transform's name, for messages ("qkv split q", "vocab trim", ...)
};

// A source tensor a plan reads, by the name the source format uses.
struct SourceRef {
  std::string name;
  std::vector<int64_t> shape;  // expected shape of one indexed slice (trailing dims)
};

struct Plan {
  std::vector<SourceRef> sources;
  std::vector<TensorPlan> outputs;
  // PlanImport: the ShardedObject unique keys ("<key>/shard_<offsets>_<shape>")
  // a GPTModel requests on load whose saved value is None: the `_extra_state`
  // of every linear layer (megatron-core's local spec; Transformer Engine
  // keeps FP8 metadata there, None when unused).
  std::vector<std::string> none_objects;
};

// How a Megatron model tensor is found in a torch_dist checkpoint. `name` is
// the module name with global layer/expert numbers
// ("decoder.layers.3.self_attention.linear_qkv.weight",
// "decoder.layers.3.mlp.experts.experts.5.linear_fc1.weight");
// LookupTorchDist answers which stored key holds it and at which leading
// index: the stacked key "decoder.layers.self_attention.linear_qkv.weight"
// at [3], the expert key "decoder.layers.mlp.experts.experts.linear_fc1.weight"
// at [3, 5], or a per-layer key "decoder.layers.3.…" at []. `has` says
// whether a stored key exists; the caller takes the first candidate found.
struct StoredRef {
  std::string key;
  std::vector<int64_t> index;
};
std::vector<StoredRef> TorchDistCandidates(std::string_view module_name);

// Megatron (torch_dist, global tensors) -> HF. `has_key(name)` tells which
// module names exist in the checkpoint (after TorchDistCandidates), and
// `sources` get the module names. `vocab_size` is the HF vocabulary (rows
// kept of the padded embedding / output layer).
// Errors: InvalidArgument (the config does not fit the family, vocab larger
// than the padded rows); NotFound naming a Megatron tensor the family needs
// that the checkpoint lacks (e.g. "decoder.layers.2.mlp.linear_fc1.weight").
Result<Plan> PlanExport(const ModelConfig& c, Family family,
                        const std::function<bool(std::string_view)>& has_module);

// HF -> Megatron: plans the Megatron torch_dist tensors (stacked keys
// "decoder.layers.<suffix>" with a leading layer axis, experts with
// [layer, expert] axes) from the HF tensors named in `sources`. One output
// per stored key and leading index (out_index). `layer_spec` "local" or
// "te" picks the norm names (input_layernorm vs
// linear_qkv.layer_norm_weight). `padded_vocab` rows for the embedding.
// Errors: InvalidArgument (config/family), NotFound naming a missing HF tensor.
// The ShardedObject unique keys of the linear layers' `_extra_state` that a
// GPTModel (local spec) requests on load, one per layer (and expert):
// "decoder.layers.self_attention.linear_qkv._extra_state/shard_3_4", ...
std::vector<std::string> ExtraStateObjects(const ModelConfig& c);

Result<Plan> PlanImport(const ModelConfig& c, Family family, std::string_view layer_spec,
                        int64_t padded_vocab,
                        const std::function<bool(std::string_view)>& has_tensor);


// ---------------------------------------------------------------------------
// Parameters of a model chunk, and the distributed optimizer's buffers
//
// megatron-core's DistributedDataParallel copies every parameter of a model
// chunk into contiguous buffers (one per (param dtype, grad dtype); expert
// parameters, when EP > 1, into separate ones) and cuts each buffer into
// buckets; the DistributedOptimizer shards each bucket evenly over the
// data-parallel ranks. Legacy `distrib_optim.pt` files and torch_dist
// `dp_reshardable` / `dp_zero_gather_scatter` optimizer state are these
// buffers, so reading them means recomputing where each parameter lies.
// This section does that, exactly as megatron-core 0.16.1 / 0.19.2 do
// (distributed_data_parallel.py, param_and_grad_buffer.py
// _ParamAndGradBuffer.__init__, distrib_optimizer.py); docs/format.md §11
// has the rules and a worked example; tests/golden/legacy/*/layout.json,
// dumped from the real DDP, check them.

// Which module classes build a transformer layer: megatron-core's local spec
// (get_gpt_layer_local_spec: separate norm modules) or the Transformer Engine
// spec (norms fused into TE's LayerNormLinear, `linear_qkv.layer_norm_weight`).
enum class LayerSpec { kLocal, kTransformerEngine };
// "local" / "te"; ParseLayerSpec also accepts "transformer_engine".
std::string_view LayerSpecName(LayerSpec s);
Result<LayerSpec> ParseLayerSpec(std::string_view name);

// How tensor-parallel ranks split a parameter (the merge of the TP shards is
// the global tensor, as torch_dist stores it).
enum class TpSplit {
  kNone,       // replicated: every TP rank holds the whole tensor
  kRows,       // dim 0 (ColumnParallelLinear, VocabParallelEmbedding)
  kCols,       // dim 1 (RowParallelLinear)
  kGatedRows,  // SwiGLU fc1: each shard is [gate_r; up_r]; global [gate_0..gate_n; up_0..up_n]
};

// Where one chunk of a model sits: pipeline rank, virtual stage, tensor and
// expert ranks.
struct ChunkCoords {
  int64_t pp_rank = 0;
  int64_t vp_stage = 0;
  int64_t tp_rank = 0;   // the dense TP rank
  int64_t ep_rank = 0;   // the expert-parallel rank (experts held: E/ep from ep_rank*E/ep)
  int64_t etp_rank = 0;  // the expert-tensor-parallel rank
};

// One parameter of a model chunk, in registration order (named_parameters()).
struct ChunkParam {
  std::string module_name;  // the chunk's named_parameters() name: local layer / expert numbers
  std::string global_name;  // torch_dist naming with global numbers (see TorchDistCandidates):
                            // "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight",
                            // "decoder.layers.3.mlp.experts.experts.5.linear_fc1.weight"
  std::vector<int64_t> shape;         // this rank's shard
  std::vector<int64_t> global_shape;  // all TP shards merged
  TpSplit split = TpSplit::kNone;
  int64_t tp_size = 1;  // ranks the split is over (tp, or etp for experts)
  int64_t tp_rank = 0;
  bool expert = false;            // allreduce == False: in the expert-parallel buffers (EP > 1)
  bool shared_embedding = false;  // a tied embedding / output weight with PP > 1 (its own bucket)
  int64_t numel() const;
};

// The parameters of chunk `at` of a GPTModel built from `c` at layout `l` with
// `spec`, in megatron-core's registration order (GPTModel: embedding, decoder
// layers, final norm, output layer; inside a layer: norms, linear_proj before
// linear_qkv, q/k norms, MLP or router + experts + shared experts).
// Errors: InvalidArgument when the config or layout is invalid, the coords
// are out of range, or a size does not divide by its TP size (naming it).
Result<std::vector<ChunkParam>> ChunkParameters(const ModelConfig& c, const ParallelLayout& l, LayerSpec spec,
                                                const ChunkCoords& at);

// The slice of global tensor `p.global_shape` that rank p.tp_rank holds, as
// row (dim 0) or column ranges: for kGatedRows two row ranges (gate, up).
struct ShardRange {
  int dim = 0;
  int64_t begin = 0;
  int64_t end = 0;
};
std::vector<ShardRange> ShardRanges(const ChunkParam& p);

// How _ParamAndGradBuffer packs parameters and pads buckets, which changed
// across megatron-core versions.
enum class BufferPacking {
  // core >= 0.8 (checked on 0.15, 0.16, 0.19): every parameter starts at a
  // multiple of 64 elements; buckets are padded to a multiple of lcm(DP, 128).
  kAligned,
  // core <= 0.6 (checked on 0.6.0; distrib_optim.pt formats A/B):
  // parameters packed back to back; buckets padded to a multiple of DP.
  // Core 0.7 is not known to be either.
  kPacked,
};

// How DistributedDataParallel was configured for a chunk.
struct BufferOptions {
  int64_t dp = 1;         // ranks of the buffer's data-parallel group (dense: DP x CP; expert: expert DP)
  // DDP bucket size of this chunk (elements); nullopt: one bucket per buffer
  // (no --overlap-grad-reduce, PP rank > 0, VPP stage > 0). See
  // DefaultBucketSize.
  std::optional<int64_t> bucket_size;
  bool grad_reduce_in_fp32 = true;  // accumulate_allreduce_grads_in_fp32
  bool pad_buckets_for_high_nccl_busbw = false;  // kAligned only
  BufferPacking packing = BufferPacking::kAligned;
};

// The bucket size Megatron-LM's DDP config gives a chunk:
// max(40e6, 1e6 * dp) with overlap_grad_reduce (or `ddp_bucket_size` when
// set), none without, and none for PP rank > 0 or VPP stage > 0.
std::optional<int64_t> DefaultBucketSize(bool overlap_grad_reduce, std::optional<int64_t> ddp_bucket_size,
                                         int64_t dp, const ChunkCoords& at);

struct BufferBucket {
  int64_t offset = 0;          // first element in the buffer
  int64_t numel = 0;           // padded size (kAligned: a multiple of lcm(dp, 128); kPacked: of dp)
  int64_t numel_unpadded = 0;  // up to the end of its last parameter
};

// One parameter's place: [start, end) in the buffer, in bucket `bucket`.
struct BufferParam {
  size_t param = 0;  // index into the chunk's ChunkParameters
  int64_t start = 0;
  int64_t end = 0;
  int64_t bucket = 0;
};

// One _ParamAndGradBuffer.
struct ParamBuffer {
  int64_t chunk = 0;  // model chunk (VPP stage) index on this PP rank
  bool expert = false;
  DType param_dtype = DType::kFloat32;
  DType grad_dtype = DType::kFloat32;
  int64_t dp = 1;
  std::vector<BufferParam> params;  // layout order: reverse registration order
  std::vector<BufferBucket> buckets;
  int64_t numel = 0;           // padded total
  int64_t numel_unpadded = 0;  // sum of the buckets' numel_unpadded

  // Offset of `p` in the buffer's "world" tensor as distrib_optim.pt (format
  // with buckets_coalesced) stores it: each bucket's end padding stripped,
  // the 64-element alignment gaps between parameters kept.
  int64_t WorldOffset(const BufferParam& p) const;
  // The [begin, end) of the buffer that DP rank r owns in bucket b.
  std::pair<int64_t, int64_t> RankRange(int64_t bucket, int64_t r) const;
};

// The buffers of one chunk's parameters, dense (expert == false) or expert,
// in the order DDP creates them (first appearance of each dtype pair).
// `params` is ChunkParameters' result; `param_dtype` the model's.
// Errors: InvalidArgument (dp < 1, a bucket size < 1).
Result<std::vector<ParamBuffer>> BuildBuffers(const std::vector<ChunkParam>& params, int64_t chunk, bool expert,
                                              DType param_dtype, const BufferOptions& options);

// "(torch.bfloat16, torch.float32)": the dtype-pair key megatron-core uses
// in distrib_optim.pt and in dp_reshardable key names.
std::string DTypePairName(DType param_dtype, DType grad_dtype);


// How DistributedDataParallel and the distributed optimizer were set up
// (Megatron-LM args: overlap_grad_reduce, ddp_bucket_size,
// accumulate_allreduce_grads_in_fp32, ddp_pad_buckets_for_high_nccl_busbw,
// num_distributed_optimizer_instances; see DistOptFromArgs in
// src/model/args.h).
struct DistOptSettings {
  LayerSpec spec = LayerSpec::kLocal;
  DType params_dtype = DType::kFloat32;
  bool overlap_grad_reduce = false;
  std::optional<int64_t> ddp_bucket_size;  // args.ddp_bucket_size; nullopt: DefaultBucketSize's rule
  bool grad_reduce_in_fp32 = true;
  bool pad_buckets_for_high_nccl_busbw = false;
  int64_t num_instances = 1;  // num_distributed_optimizer_instances
  // Not in args: what wrote the checkpoint (a legacy distrib_optim.pt in
  // format A/B is kPacked). kPacked's default bucket size is DDP's 40e6.
  BufferPacking packing = BufferPacking::kAligned;
};

// The distributed optimizer of one model-parallel rank (tp, pp, ep, etp),
// which is one legacy rank folder: the parameters of each of its model
// chunks (VPP stages) and the buffers of its sub-optimizers in gbuf_idx
// order: the dense optimizer's (chunk 0's buffers, then chunk 1's, ...)
// and, with EP > 1, the expert optimizer's, built the same way.
struct RankOptimizer {
  ChunkCoords at;  // vp_stage unused
  std::vector<std::vector<ChunkParam>> chunks;
  std::vector<ParamBuffer> dense;
  std::vector<ParamBuffer> expert;
  int64_t dense_dp = 1;   // DP x CP / instances
  int64_t expert_dp = 1;  // TP x CP x DP / (EP x ETP) / instances
  // The sub-optimizers' data_parallel_group_idx (get_megatron_optimizer:
  // this rank's rank in the model-parallel group 'tp-pp' for the dense
  // optimizer, in the expert tensor-model-pipeline group 'tp-ep-pp' for the
  // expert one); torch_dist dp_reshardable keys are
  // "optimizer.distributed.dp_group_idx_<idx>.gbuf_idx_<g>...", per sub-optimizer.
  // Both groups list their ranks tp (etp) fastest, then ep, then pp; checked
  // against the real ChainedOptimizer in tests/golden/legacy/*/layout.json.
  int64_t dense_dp_group_idx = 0;   // tp_rank + tp * pp_rank
  int64_t expert_dp_group_idx = 0;  // etp_rank + etp * (ep_rank + ep * pp_rank)
};

// Errors: as ChunkParameters; InvalidArgument when the expert grid does not
// divide or the instances do not divide the DP size.
Result<RankOptimizer> BuildRankOptimizer(const ModelConfig& c, const ParallelLayout& l, const DistOptSettings& s,
                                         const ChunkCoords& at);


// One entry of a chunk's state_dict_for_save_checkpoint() (a legacy
// `model` / `model<i>` dict), in order: a parameter (index into the chunk's
// ChunkParameters) or `<module>._extra_state` (param < 0), which every
// linear layer (megatron-core's Column/RowParallelLinear, TE linears) has
// after its parameters, None unless FP8 metadata is kept; the output layer
// has one even when a tied embedding leaves it no weight.
struct StateEntry {
  std::string name;
  int64_t param = -1;
};
std::vector<StateEntry> ChunkStateDict(const std::vector<ChunkParam>& params);
// Where a global rank sits in megatron-core's two rank grids (parallel_state
// RankGenerator, the default order "tp-cp-ep-dp-pp"; not
// --use-tp-pp-dp-mapping): the dense grid is tp (fastest), cp, dp, pp; the
// expert grid reuses the same ranks as etp (fastest), ep, expert dp, pp. With
// i = rank mod (tp * cp * dp), the rank inside its pipeline stage:
//   tp_rank = i % tp, cp_rank = (i / tp) % cp, dp_rank = i / (tp * cp),
//   etp_rank = i % etp, ep_rank = (i / etp) % ep, expert_dp_rank = i / (etp * ep),
//   pp_rank = rank / (tp * cp * dp).
// So a rank's dense TP rank and its expert TP rank differ in general (TP2
// ETP1 EP2: rank 1 is tp_rank 1, etp_rank 0, ep_rank 1).
struct RankCoordinates {
  int64_t rank = 0;
  int64_t tp_rank = 0;
  int64_t cp_rank = 0;
  int64_t dp_rank = 0;
  int64_t pp_rank = 0;
  int64_t ep_rank = 0;
  int64_t etp_rank = 0;
  int64_t expert_dp_rank = 0;
};
// Errors: InvalidArgument (an invalid layout, rank outside [0, world_size)).
Result<RankCoordinates> GlobalRankCoordinates(const ParallelLayout& l, int64_t rank);

// How a Megatron sharded tensor (a model weight, or its optimizer state in the
// model-space forms: fully_reshardable, fully_sharded_model_space) is shared
// between ranks: the ranks that hold one chunk of it are Megatron's replicas
// of that chunk (ShardedTensor.replica_id; one of them writes it, the rest
// are deduplicated on save).
enum class ChunkSharing {
  kDense,          // not split by TP (norms, routers): every rank of its pipeline stage
  kDenseTpSplit,   // split by TP: its stage's ranks of one TP rank (DP x CP replicas)
  kExpert,         // an expert's tensor not split by ETP: its stage's ranks of one EP rank
  kExpertTpSplit,  // split by ETP: its stage's ranks of one EP and ETP rank (expert-DP replicas)
};
// The holders of a chunk by the rank that wrote it: group_of_rank[writer]
// indexes groups, each the global ranks of one group, ascending; every rank is
// in exactly one group. Errors: those of GlobalRankCoordinates.
struct ChunkHolderGroups {
  std::vector<std::vector<int64_t>> groups;
  std::vector<int64_t> group_of_rank;
};
Result<ChunkHolderGroups> ChunkHolders(const ParallelLayout& l, ChunkSharing sharing);

// One chunk of a stored tensor: its offsets and sizes in the global shape.
struct ChunkExtent {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
};
// How the Megatron torch_dist tensor `key` is shared, from its name and its
// chunks: TP-split (ETP-split for experts: `.experts.`, not shared_experts)
// when two chunks cover the same ranges of its stacked axes (the layers of
// `decoder.layers.<name>`, the experts of `experts.experts.<name>`; a tensor
// without stacked axes when it has two chunks). Optimizer state in model space
// (`optimizer.state.<name>.<model key>`) is shared as its parameter; nullopt
// for what each rank holds alone (other `optimizer.` keys: the distributed
// optimizer's per-rank buckets).
std::optional<ChunkSharing> TensorSharing(std::string_view key, std::span<const ChunkExtent> chunks);

// One folder of a legacy (--ckpt-format torch) checkpoint,
// iter_NNNNNNN/<folder>/{model_optim_rng.pt, distrib_optim.pt}, the
// model-parallel coordinates of the rank that writes it, and what it writes.
struct LegacyRankFolder {
  std::string folder;  // "mp_rank_TT[_PPP][_EEE]"
  ChunkCoords at;      // tp_rank (dense), pp_rank, ep_rank, etp_rank of the writer; vp_stage 0
  int64_t rank = 0;    // the writer's global rank
  bool model_file = false;        // writes model_optim_rng.pt (expert DP rank 0)
  bool dense_optimizer = false;   // distrib_optim.pt holds the dense optimizer's state (dense DP and CP rank 0)
  bool expert_optimizer = false;  // ... and the expert optimizer's (EP > 1, expert DP rank 0)
};

// The folders a legacy checkpoint of layout `l` holds, in global rank order,
// as Megatron-LM (core_v0.16.1) checkpointing.py writes them:
//  * model_optim_rng.pt is written by every rank whose expert_data_parallel_rank
//    is 0 (save_checkpoint: "mpu.get_expert_data_parallel_rank() == 0"), i.e.
//    the ranks with i < etp * ep inside each pipeline stage (see
//    GlobalRankCoordinates); without MoE (etp = tp, ep = 1) these are DP
//    rank 0, CP rank 0.
//  * the folder is named by get_checkpoint_name from the writer's DENSE TP
//    rank, its PP rank and its EP rank: "mp_rank_{tp:02d}", then
//    "_{pp:03d}" only when PP > 1, then "_{ep:03d}" only when EP > 1. With
//    PP = 1 and EP > 1 the second field is the EP rank ("mp_rank_00_001" is
//    tp 0, ep 1), with both it is "mp_rank_TT_PPP_EEE".
//  * the folder holds the writer's dense parameters (dense tp_rank) and its
//    experts: global expert ids ep_rank * E/ep + j for local expert j, sharded
//    over etp at the writer's etp_rank.
//  * distrib_optim.pt: every rank calls save_parameter_state into its own
//    folder; a sub-optimizer's state is kept by its DP rank 0
//    (ChainedOptimizer.save_parameter_state): one sub-optimizer: that
//    DistributedOptimizer's dict, written by dense DP/CP rank 0 (i < tp);
//    dense + expert: a list [dense, expert] with None where the rank is not
//    that sub-optimizer's DP rank 0, written when it is DP rank 0 of either.
//    So the dense state of (tp_rank, pp) is in the folder of rank i = tp_rank
//    (ep_rank (tp_rank / etp) % ep), not in every EP folder: MoE TP1 EP2 DP2
//    writes [dense, expert] to mp_rank_00_000 and [None, expert] to
//    mp_rank_00_001.
// Consequences: folders are not the full tp x ep product (TP2 ETP1 EP2 DP1
// writes mp_rank_00_000 and mp_rank_01_001 only), and with etp * ep < tp some
// dense TP ranks write no model_optim_rng.pt at all (megatron's legacy format
// then lacks their dense weights; their folders hold distrib_optim.pt only,
// model_file false).
// Errors: InvalidArgument (an invalid layout; two writers mapping to one
// folder, which happens when etp > tp, e.g. TP1 ETP2: the legacy format
// cannot hold that layout).
Result<std::vector<LegacyRankFolder>> LegacyRanks(const ParallelLayout& l);

}  // namespace ckpt::model

#endif  // CKPT_MODEL_H_
