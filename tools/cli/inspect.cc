#include <iostream>

#include "commands.h"
#include "lib/inspect.h"

namespace ckpt::cli {

void RegisterInspect(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Show what a checkpoint holds: tensors (dtype, shape, bytes, storage), other objects\n"
      "(shown safely: pickled code is never run), format details. Reads metadata only.\n"
      "In the text report, objects whose keys differ in one number only, with equal values\n"
      "(or integer values that count along with that number), print as one line, at the\n"
      "place of the first:\n"
      "  decoder.layers.mlp.linear_fc1._extra_state/shard_{0..3}_4 (NoneType): None  (x4)\n"
      "{0..3} is the set of numbers the keys take ({0,2,4}, {0..3,8..11}), (x4) how many\n"
      "objects the line stands for. --json lists every object, unfolded.");
  cmd->add_option("PATH", opts->path, "a .pt/.bin/.pth, .safetensors, sharded index json, or folder")
      ->required();
  cmd->add_flag("--json", opts->json, "print one JSON document");
  cmd->add_option("--html", opts->html_path,
                  "also write the layout map to this .html: one self-contained page (no network) with the\n"
                  "files by rank, every tensor's chunks drawn over its shape and coloured by the rank\n"
                  "that wrote them (searchable, grouped), the parallel layout and the problems\n"
                  "(written when the inspection succeeds, also when it finds problems in the data)");
  cmd->add_option("--svg", opts->svg_path,
                  "also write a picture of the checkpoint's files to this .svg: per rank, each file's\n"
                  "size as a bar and what it holds; problems in red (written when the inspection\n"
                  "succeeds, also when it finds problems in the data)");
  cmd->add_option("--max-rows", opts->max_rows,
                  "show at most N rows of each list: tensors, objects (once folded), data files\n"
                  "(0: all; --json shows all)");
  cmd->callback([opts, exit_code] {
    opts->free_reader = false;  // the process exits next
    Status s = Inspect(*opts, std::cout);
    *exit_code = s.ok() ? 0 : ReportError("inspect", s);
  });
}

}  // namespace ckpt::cli
