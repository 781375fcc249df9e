#include <unistd.h>

#include <iostream>

#include "commands.h"
#include "lib/diff.h"
#include "lib/exit_code.h"

namespace ckpt::cli {

void RegisterDiff(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<DiffOptions>();
  CLI::App* cmd = app.add_subcommand(
      "diff",
      "Compare two checkpoints of any formats: keys only in one, dtype and shape changes,\n"
      "values of common tensors (max abs/rel difference, elements failing\n"
      "|a-b| <= atol + rtol*|b| as numpy.allclose), and non-tensor objects.\n"
      "NaN at the same position on both sides counts as equal; -0.0 equals 0.0; an infinity\n"
      "equals only the same infinity. Integers and bool compare exactly; bfloat16, float16\n"
      "and float8 are decoded to double; complex compares the magnitude of the difference.\n"
      "Tensors are streamed in lockstep in bounded pieces (memory does not grow with size).\n"
      "Exit codes: 0 identical (within tolerance), 1 different, 2 error.");
  cmd->add_option("A", opts->a, "first checkpoint (any format inspect reads)")->required();
  cmd->add_option("B", opts->b, "second checkpoint; relative differences are against B")
      ->required();
  cmd->add_option("--atol", opts->atol, "absolute tolerance (default 0: exact)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--rtol", opts->rtol, "relative tolerance, times |b| (default 0: exact)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", opts->json, "print one JSON document");
  cmd->add_flag("--keys-only", opts->keys_only,
                "compare keys, dtypes, shapes and objects only; read no tensor data");
  cmd->add_flag("--tensors-only", opts->tensors_only,
                "compare tensors only, leaving non-tensor objects out (useful across formats:\n"
                "safetensors holds no objects; torch.save nests what DCP stores as one entry)");
  cmd->callback([opts, exit_code] {
    opts->show_progress = ::isatty(STDERR_FILENO);
    Result<bool> r = RunDiff(*opts, std::cout, std::cerr);
    if (!r.ok()) {
      ReportError("diff", r.status());
      *exit_code = kExitUsage;  // as diff(1): 2 for trouble, whatever its kind
      return;
    }
    *exit_code = *r ? kExitOk : kExitDataProblem;
  });
}

}  // namespace ckpt::cli
