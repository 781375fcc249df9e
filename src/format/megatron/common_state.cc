// The common (non-sharded) state dict: common.pt or common_state/shard_0_1.
#include <algorithm>
#include <string>

#include "format/megatron/megatron.h"
#include "util/strings.h"

namespace ckpt::megatron {
namespace {

using pickle::Kind;
using pickle::Value;

std::optional<double> AsNumber(const Value* v) {
  if (v == nullptr) return std::nullopt;
  if (v->kind == Kind::kInt) return static_cast<double>(v->i);
  if (v->kind == Kind::kFloat) return v->f;
  return std::nullopt;
}

std::string KeyText(const Value* k) {
  if (k != nullptr && k->kind == Kind::kString) return std::string(k->str());
  return pickle::Repr(k, 60);
}

// The attribute dict of an object: BUILD state as a dict, or the first
// element of a (dict, slotstate) pair; nullptr otherwise.
const Value* ObjectStateDict(const Value* obj) {
  if (obj == nullptr) return nullptr;
  if (obj->kind == Kind::kDict) return obj;
  if (obj->kind != Kind::kObject || obj->state() == nullptr) return nullptr;
  const Value* st = obj->state();
  if (st->kind == Kind::kDict) return st;
  if (st->kind == Kind::kTuple && st->items().size() == 2 && st->items()[0] != nullptr &&
      st->items()[0]->kind == Kind::kDict) {
    return st->items()[0];
  }
  return nullptr;
}

void OptionalBoolField(const Value* dict, std::string_view field, std::string_view where,
                       std::optional<bool>* out, std::vector<std::string>* warnings) {
  const Value* v = dict->Get(field);
  if (v == nullptr) return;
  if (v->kind == Kind::kBool) {
    *out = v->i != 0;
  } else if (v->kind != Kind::kNone) {
    warnings->push_back(StrCat(where, ".", field, " is ", pickle::TypeName(v), ", expected bool"));
  }
}

}  // namespace

Result<CommonState> ExtractCommonState(const Value* root, std::string_view name) {
  CommonState c;
  if (root == nullptr) return DataLossError(StrCat(name, ": no common state (null root)"));
  if (root->kind == Kind::kList || root->kind == Kind::kTuple) {
    // core >= 0.19: torch.save([common dict]) of the ShardedObject "common_state".
    if (root->items().size() != 1 || root->items()[0] == nullptr || root->items()[0]->kind != Kind::kDict) {
      return DataLossError(StrCat(name, ": common state is a ", pickle::TypeName(root), " of ",
                                  root->items().size(),
                                  " elements; expected a one-element list holding the common dict"));
    }
    root = root->items()[0];
    c.unwrapped_list = true;
  }
  if (root->kind != Kind::kDict) {
    return DataLossError(StrCat(name, ": common state is ", pickle::TypeName(root),
                                ", expected a dict (Megatron-Core common state dict)"));
  }
  c.root = root;
  for (const auto& [k, v] : root->dict()) {
    c.top_level.push_back({KeyText(k), pickle::TypeName(v)});
  }

  auto& w = c.warnings;
  if (const Value* v = root->Get("iteration")) {
    if (v->kind == Kind::kInt) {
      c.iteration = v->i;
    } else {
      w.push_back(StrCat("iteration is ", pickle::TypeName(v), ", expected int"));
    }
  }
  if (const Value* v = root->Get("checkpoint_version")) {
    if (auto n = AsNumber(v)) {
      c.checkpoint_version = *n;
    } else {
      w.push_back(StrCat("checkpoint_version is ", pickle::TypeName(v), ", expected float"));
    }
  }
  if (const Value* v = root->Get("num_floating_point_operations_so_far")) {
    if (auto n = AsNumber(v)) {
      c.num_floating_point_operations_so_far = *n;
    } else {
      w.push_back(StrCat("num_floating_point_operations_so_far is ", pickle::TypeName(v),
                         ", expected a number"));
    }
  }

  if (const Value* a = root->Get("args")) {
    c.args = a;
    c.args_type = pickle::TypeName(a);
    const Value* st = ObjectStateDict(a);
    if (st == nullptr) {
      if (a->kind != Kind::kNone) {
        w.push_back(StrCat("args is ", c.args_type, " without an attribute dict"));
      }
    } else {
      for (const auto& [k, v] : st->dict()) {
        if (k != nullptr && k->kind == Kind::kString) c.args_fields.emplace(k->str(), v);
      }
    }
  }

  if (const Value* m = root->Get("content_metadata")) {
    if (m->kind == Kind::kDict) {
      c.content_metadata = m;
      if (const Value* t = m->Get("distrib_optim_sharding_type")) {
        if (t->kind == Kind::kString) {
          c.distrib_optim_sharding_type = t->str();
        } else if (t->kind != Kind::kNone) {
          w.push_back(StrCat("content_metadata.distrib_optim_sharding_type is ",
                             pickle::TypeName(t), ", expected str"));
        }
      }
      OptionalBoolField(m, "distrib_optim_fully_reshardable_mem_efficient", "content_metadata",
                        &c.distrib_optim_fully_reshardable_mem_efficient, &w);
      OptionalBoolField(m, "singleton_local_shards", "content_metadata",
                        &c.singleton_local_shards, &w);
      OptionalBoolField(m, "chained_optim_avoid_prefix", "content_metadata",
                        &c.chained_optim_avoid_prefix, &w);
    } else if (m->kind != Kind::kNone) {
      w.push_back(StrCat("content_metadata is ", pickle::TypeName(m), ", expected dict"));
    }
  }

  if (const Value* s = root->Get("opt_param_scheduler")) {
    if (s->kind == Kind::kDict) {
      c.opt_param_scheduler = s;
    } else {
      w.push_back(StrCat("opt_param_scheduler is ", pickle::TypeName(s), ", expected dict"));
    }
  }

  if (const Value* o = root->Get("optimizer")) {
    c.optimizer = o;
    auto add_type = [&](const Value* d) {
      const Value* t = d->Get("param_state_sharding_type");
      if (t == nullptr || t->kind != Kind::kString) return;
      if (std::find(c.param_state_sharding_types.begin(), c.param_state_sharding_types.end(),
                    t->str()) == c.param_state_sharding_types.end()) {
        c.param_state_sharding_types.push_back(std::string(t->str()));
      }
    };
    if (o->kind == Kind::kDict) {
      add_type(o);
      if (c.param_state_sharding_types.empty()) {
        // ChainedOptimizer: {0: {...}, 1: {...}} (one level down).
        for (const auto& [k, v] : o->dict()) {
          if (v != nullptr && v->kind == Kind::kDict) add_type(v);
        }
      }
    }
  }

  c.has_rng_state = root->Get("rng_state") != nullptr;
  c.has_rerun_state_machine = root->Get("rerun_state_machine") != nullptr;
  for (const auto& tk : c.top_level) {
    if (tk.key == "model" ||
        (tk.key.size() > 5 && tk.key.compare(0, 5, "model") == 0 &&
         std::all_of(tk.key.begin() + 5, tk.key.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))) {
      c.has_model = true;
    }
  }
  return c;
}

std::optional<int64_t> ArgInt(const CommonState& c, std::string_view name) {
  auto it = c.args_fields.find(name);
  if (it == c.args_fields.end() || it->second == nullptr) return std::nullopt;
  const Value* v = it->second;
  if (v->kind == Kind::kInt || v->kind == Kind::kBool) return v->i;
  return std::nullopt;
}

std::optional<bool> ArgBool(const CommonState& c, std::string_view name) {
  auto it = c.args_fields.find(name);
  if (it == c.args_fields.end() || it->second == nullptr) return std::nullopt;
  const Value* v = it->second;
  if (v->kind == Kind::kBool || v->kind == Kind::kInt) return v->i != 0;
  return std::nullopt;
}

std::optional<std::string> ArgString(const CommonState& c, std::string_view name) {
  auto it = c.args_fields.find(name);
  if (it == c.args_fields.end() || it->second == nullptr) return std::nullopt;
  const Value* v = it->second;
  if (v->kind == Kind::kString) return std::string(v->str());
  if (v->kind == Kind::kGlobal) return std::string(v->str()) + "." + std::string(v->name());
  return std::nullopt;
}

}  // namespace ckpt::megatron
