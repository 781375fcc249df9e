// The entries of a chunk's state dict as megatron-core's modules produce
// them (torch's Module.state_dict: a module's own parameters, its buffers,
// its _extra_state, then its children), checked against real legacy
// checkpoints (tests/golden/legacy) and state_dict_for_save_checkpoint() of
// every family.
#include <string>
#include <vector>

#include "ckpt/model.h"
#include "util/strings.h"

namespace ckpt::model {
namespace {

// "decoder.layers.0.self_attention.linear_qkv.weight" -> "decoder.layers.0.self_attention.linear_qkv";
// TE grouped experts "…experts.linear_fc1.weight3" -> "…experts.linear_fc1".
std::string ModuleOf(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

// Whether a module keeps _extra_state: the linear layers.
bool IsLinear(const std::string& module) {
  const size_t dot = module.rfind('.');
  const std::string last = dot == std::string::npos ? module : module.substr(dot + 1);
  return last == "linear_proj" || last == "linear_qkv" || last == "linear_fc1" || last == "linear_fc2" ||
         last == "output_layer";
}

}  // namespace

std::vector<StateEntry> ChunkStateDict(const std::vector<ChunkParam>& params) {
  std::vector<StateEntry> out;
  bool post = false;
  bool output_weight = false;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i].module_name;
    out.push_back({name, static_cast<int64_t>(i)});
    post = post || name.rfind("decoder.final_layernorm.", 0) == 0;
    output_weight = output_weight || name == "output_layer.weight";
    const std::string module = ModuleOf(name);
    const bool last_of_module = i + 1 == params.size() || ModuleOf(params[i + 1].module_name) != module;
    if (last_of_module && IsLinear(module)) out.push_back({StrCat(module, "._extra_state"), -1});
  }
  if (post && !output_weight) out.push_back({"output_layer._extra_state", -1});
  return out;
}

}  // namespace ckpt::model
