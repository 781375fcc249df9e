#include "format/pickle/unpickler.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "format/pickle/pickler.h"
#include "testing/testutil.h"

using namespace std::string_literals;

namespace ckpt::pickle {
namespace {

using ::ckpt::testing::ReadSourceFile;

// A ByteSource without Data(), to exercise the buffered reader.
class NoDataSource final : public ByteSource {
 public:
  explicit NoDataSource(std::string s) : s_(std::move(s)) {}
  uint64_t Size() const override { return s_.size(); }
  Status ReadAt(uint64_t offset, size_t n, void* dst) const override { return s_src_.ReadAt(offset, n, dst); }
  std::string_view Name() const override { return "nodata.pkl"; }

 private:
  std::string s_;
  SpanSource s_src_{s_.data(), s_.size(), "nodata.pkl"};
};

Result<Unpickled> Load(std::string_view bytes, Mode mode = Mode::kStrict,
                       UnpickleOptions opts = {}) {
  opts.mode = mode;
  SpanSource src(bytes.data(), bytes.size(), "test.pkl");
  return Unpickle(src, 0, opts);
}

const Value* Item(const Value* dict, std::string_view key) {
  const Value* v = dict->Get(key);
  EXPECT_NE(v, nullptr) << key;
  return v;
}

TEST(Unpickler, ReadsBinaryIntsOfEveryWidth) {
  // PROTO 2, MARK, K 5, M 40000, J -70000, LONG1 2**40, LONG1 -(2**70), TUPLE, STOP
  std::string s = "\x80\x02(K\x05M\x40\x9cJ\x90\xee\xfe\xff";
  s += std::string("\x8a\x06\x00\x00\x00\x00\x00\x01", 8);
  s += std::string("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0", 11);
  s += "t.";
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Value* t = r->root;
  ASSERT_EQ(t->kind, Kind::kTuple);
  ASSERT_EQ(t->items().size(), 5u);
  EXPECT_EQ(t->items()[0]->i, 5);
  EXPECT_EQ(t->items()[1]->i, 40000);
  EXPECT_EQ(t->items()[2]->i, -70000);
  EXPECT_EQ(t->items()[3]->i, int64_t{1} << 40);
  EXPECT_EQ(t->items()[4]->kind, Kind::kBigInt);
  EXPECT_EQ(t->items()[4]->str().size(), 9u);
  EXPECT_EQ(r->end_offset, s.size());
}

TEST(Unpickler, AllProtocolsOfOneObjectGiveTheSameTree) {
  std::string reprs[6];
  for (int p = 0; p < 6; ++p) {
    std::string bytes = ReadSourceFile("tests/unit/pickle/testdata/rich_p" + std::to_string(p) + ".pkl");
    ASSERT_FALSE(bytes.empty());
    auto r = Load(bytes);
    ASSERT_TRUE(r.ok()) << "protocol " << p << ": " << r.status().ToString();
    const Value* d = r->root;
    ASSERT_EQ(d->kind, Kind::kDict);
    EXPECT_EQ(Item(d, "int")->i, 5);
    EXPECT_EQ(Item(d, "neg")->i, -7);
    EXPECT_EQ(Item(d, "i16")->i, 40000);
    EXPECT_EQ(Item(d, "i32")->i, -70000);
    EXPECT_EQ(Item(d, "i64")->i, int64_t{1} << 40);
    EXPECT_EQ(Item(d, "big")->kind, Kind::kBigInt);
    EXPECT_EQ(Item(d, "nbig")->kind, Kind::kBigInt);
    EXPECT_DOUBLE_EQ(Item(d, "float")->f, 1.5);
    EXPECT_DOUBLE_EQ(Item(d, "nfloat")->f, -0.25);
    EXPECT_EQ(Item(d, "str")->str(), "h\xc3\xa9llo \xe2\x82\xac");
    EXPECT_EQ(Item(d, "bytes")->kind, Kind::kBytes);
    EXPECT_EQ(Item(d, "bytes")->str(), std::string("\x00\xff" "ab", 4));
    EXPECT_EQ(Item(d, "empty_bytes")->kind, Kind::kBytes);
    EXPECT_TRUE(Item(d, "ba")->bytearray);
    EXPECT_EQ(Item(d, "ba")->str(), "xy");
    EXPECT_EQ(Item(d, "set")->kind, Kind::kSet);
    EXPECT_FALSE(Item(d, "set")->frozen);
    EXPECT_TRUE(Item(d, "fs")->frozen);
    EXPECT_TRUE(Item(d, "od")->ordered);
    EXPECT_EQ(Item(d, "t")->kind, Kind::kBool);
    EXPECT_EQ(Item(d, "t")->i, 1);
    EXPECT_EQ(Item(d, "f")->i, 0);
    const Value* shared = Item(d, "shared");
    ASSERT_EQ(shared->items().size(), 2u);
    EXPECT_EQ(shared->items()[0], shared->items()[1]) << "memo must share one Value";
    EXPECT_EQ(Repr(Item(d, "nested")), "{'a': [{'b': 1}]}");
    reprs[p] = Repr(d, 100000);
  }
  for (int p = 1; p < 6; ++p) EXPECT_EQ(reprs[p], reprs[0]) << "protocol " << p;
  // (checked on the last protocol's tree)
}

TEST(Unpickler, BufferedReaderMatchesDirectReads) {
  std::string bytes = ReadSourceFile("tests/unit/pickle/testdata/canonical_p2.pkl");
  ASSERT_GT(bytes.size(), 1u << 15);
  auto direct = Load(bytes);
  ASSERT_TRUE(direct.ok()) << direct.status().ToString();
  NoDataSource src(bytes);
  auto buffered = Unpickle(src, 0, {});
  ASSERT_TRUE(buffered.ok()) << buffered.status().ToString();
  EXPECT_EQ(Repr(buffered->root, 1 << 20), Repr(direct->root, 1 << 20));
  // Large payloads cross the 64 KiB buffer boundary.
  std::string big = "\x80\x02X" + std::string("\x00\x00\x02\x00", 4) + std::string(131072, 'z') + ".";
  NoDataSource bsrc(big);
  auto b = Unpickle(bsrc, 0, {});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->root->str().size(), 131072u);
}

TEST(Unpickler, ReadsConsecutivePicklesViaEndOffset) {
  std::string s = "\x80\x02K\x01.\x80\x02K\x02.";
  SpanSource src(s.data(), s.size(), "two.pkl");
  auto a = Unpickle(src, 0, {});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->end_offset, 5u);
  auto b = Unpickle(src, a->end_offset, {});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->root->i, 2);
  EXPECT_EQ(b->end_offset, s.size());
}

TEST(Unpickler, StrictModeRejectsUnknownGlobalNamingIt) {
  std::string s = "\x80\x02\x63os\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R."s;
  auto r = Load(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnimplemented);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("test.pkl: offset 2: GLOBAL: global 'os.system' is not allowed"), std::string::npos) << m;
  EXPECT_NE(m.find("inspect mode"), std::string::npos) << m;
}

TEST(Unpickler, InspectModeKeepsUnknownGlobalAsOpaqueObjectWithoutCalling) {
  std::string s = "\x80\x02\x63os\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R."s;
  auto r = Load(s, Mode::kInspect);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Value* o = r->root;
  ASSERT_EQ(o->kind, Kind::kObject);
  EXPECT_TRUE(o->opaque);
  EXPECT_TRUE(o->is_object_of("os", "system"));
  ASSERT_EQ(o->args()->items().size(), 1u);
  EXPECT_EQ(o->args()->items()[0]->str(), "ls");
  EXPECT_EQ(TypeName(o), "os.system");
}

TEST(Unpickler, StrictModeAllowsTorchAndMegatronGlobals) {
  for (const char* g : {"torch\nFloatStorage\n", "torch\nbfloat16\n", "torch._utils\n_rebuild_tensor_v2\n",
                        "megatron.core.enums\nModelType\n", "argparse\nNamespace\n",
                        "numpy.core.multiarray\n_reconstruct\n", "__builtin__\nset\n",
                        "torch.distributed.checkpoint.metadata\nMetadata\n"}) {
    std::string s = std::string("\x80\x02\x63") + g + ".";
    auto r = Load(s);
    EXPECT_TRUE(r.ok()) << g << ": " << r.status().ToString();
  }
  auto r = Load("\x80\x02\x63__builtin__\nset\n.");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->root->is_global("builtins", "set")) << "py2 names are normalized";
  EXPECT_FALSE(Load("\x80\x02\x63torch\nload\n.").ok());
  EXPECT_FALSE(Load("\x80\x02\x63\x62uiltins\neval\n.").ok());
}

TEST(Unpickler, FoldsWellKnownConstructors) {
  // OrderedDict() with BUILD state, torch.Size((2, 3)), _codecs.encode('\xff', 'latin1')
  std::string s =
      "\x80\x02(\x63\x63ollections\nOrderedDict\n)R}X\x01\x00\x00\x00mK\x01sb"s
      "\x63torch\nSize\nK\x02K\x03\x86\x85R"
      "\x63_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R"s
      "\x63__builtin__\nbytearray\n)R"
      "t.";
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto& it = r->root->items();
  ASSERT_EQ(it.size(), 4u);
  EXPECT_EQ(it[0]->kind, Kind::kDict);
  EXPECT_TRUE(it[0]->ordered);
  ASSERT_NE(it[0]->state(), nullptr);
  EXPECT_EQ(it[0]->state()->Get("m")->i, 1);
  EXPECT_EQ(it[1]->kind, Kind::kTuple);
  EXPECT_TRUE(it[1]->torch_size);
  ASSERT_EQ(it[1]->items().size(), 2u);
  EXPECT_EQ(it[1]->items()[1]->i, 3);
  EXPECT_EQ(it[2]->kind, Kind::kBytes);
  EXPECT_EQ(it[2]->str(), "\xff");
  EXPECT_TRUE(it[3]->bytearray);
  EXPECT_TRUE(it[3]->str().empty());
}

TEST(Unpickler, SetItemsAndAppendsOntoObjectsGoToItsDictAndItems) {
  // defaultdict(list) with one item; an opaque list subclass with APPENDS.
  std::string s =
      "\x80\x02(\x63\x63ollections\ndefaultdict\n\x63__builtin__\nlist\n\x85RX\x01\x00\x00\x00kK\x01s"s
      "\x63mymod\nMyList\n)\x81(K\x01K\x02" "e"
      "t.";
  EXPECT_FALSE(Load(s).ok()) << "mymod.MyList is not allowlisted";
  auto r = Load(s, Mode::kInspect);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Value* dd = r->root->items()[0];
  EXPECT_TRUE(dd->is_object_of("collections", "defaultdict")) << Repr(r->root);
  EXPECT_FALSE(dd->opaque);
  ASSERT_EQ(dd->dict().size(), 1u);
  EXPECT_EQ(dd->dict()[0].first->str(), "k");
  const Value* ml = r->root->items()[1];
  EXPECT_TRUE(ml->opaque);
  EXPECT_TRUE(ml->newobj);
  EXPECT_EQ(ml->items().size(), 2u);
}

TEST(Unpickler, PersistentIdsKeepTheirTuple) {
  std::string s = "\x80\x02(X\x07\x00\x00\x00storage\x63torch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x06tQ."s;
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->root->kind, Kind::kPersistentId);
  const Value* pid = r->root->items()[0];
  ASSERT_EQ(pid->items().size(), 5u);
  EXPECT_EQ(pid->items()[2]->str(), "0");
  EXPECT_EQ(pid->items()[4]->i, 6);
}

TEST(Unpickler, ProtocolZeroTextOpcodes) {
  // INT, LONG (big), FLOAT, STRING with escapes, UNICODE with \u escape,
  // PUT/GET, DICT, LIST, TUPLE, POP, DUP, POP_MARK.
  std::string s =
      "(I42\nL123456789012345678901234567890L\nF-2.5\nS'a\\n\\x41\\''\nVx\\u20acy\np0\n"
      "g0\n0(I1\n1I01\n(lp1\n(I7\nI8\ndp2\ntp3\n.";
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto& it = r->root->items();
  ASSERT_EQ(it.size(), 8u) << Repr(r->root);
  EXPECT_EQ(it[0]->i, 42);
  EXPECT_EQ(it[1]->kind, Kind::kBigInt);
  EXPECT_DOUBLE_EQ(it[2]->f, -2.5);
  EXPECT_EQ(it[3]->str(), "a\nA'");
  EXPECT_EQ(it[4]->str(), "x\xe2\x82\xacy");
  EXPECT_EQ(it[5]->kind, Kind::kBool);
  EXPECT_EQ(it[6]->kind, Kind::kList);
  EXPECT_EQ(it[6]->items().size(), 0u);
  ASSERT_EQ(it[7]->kind, Kind::kDict);
  ASSERT_EQ(it[7]->dict().size(), 1u);
  EXPECT_EQ(it[7]->dict()[0].first->i, 7);
  EXPECT_EQ(it[7]->dict()[0].second->i, 8);
}

TEST(Unpickler, TruncatedStreamIsDataLossNamingOffset) {
  std::string s = "\x80\x02X\x05\x00\x00\x00hel"s;
  auto r = Load(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find("offset 2: BINUNICODE: length 5 exceeds the 3 bytes left"),
            std::string::npos)
      << r.status().message();
  auto r2 = Load("\x80\x02K\x01");
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), Code::kDataLoss);
  EXPECT_NE(r2.status().message().find("unexpected end of pickle at offset 4 (no STOP)"),
            std::string::npos)
      << r2.status().message();
}

TEST(Unpickler, HugeLengthFieldsAreCheckedBeforeAllocating) {
  std::string s = "\x80\x02\x8e\xff\xff\xff\xff\xff\xff\xff\x7fzz.";
  auto r = Load(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find("BINBYTES8: length 9223372036854775807 exceeds the 3 bytes left"),
            std::string::npos)
      << r.status().message();
}

TEST(Unpickler, MarkBombFailsFastWithResourceExhausted) {
  std::string s(10 << 20, '(');
  auto r = Load(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r.status().message().find("MARK"), std::string::npos) << r.status().message();
}

TEST(Unpickler, NestingBombFailsFast) {
  const size_t n = 2 << 20;
  std::string s = "\x80\x02" + std::string(n, ']') + std::string(n - 1, 'a') + ".";
  UnpickleOptions o;
  auto r = Load(s, Mode::kStrict, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  // Either the stack cap or the nesting cap, never a crash.
  EXPECT_TRUE(r.status().message().find("nested deeper") != std::string::npos ||
              r.status().message().find("stack deeper") != std::string::npos)
      << r.status().message();
  // Nesting built from the inside out (((None,),),...) hits the depth cap.
  std::string s3 = "\x80\x02N" + std::string(5000, '\x85') + ".";
  auto r3 = Load(s3);
  ASSERT_FALSE(r3.ok());
  EXPECT_EQ(r3.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r3.status().message().find("TUPLE1: containers nested deeper than 1000"),
            std::string::npos)
      << r3.status().message();
}

TEST(Unpickler, SparseMemoIndicesCostOneEntry) {
  std::string s = "\x80\x02K\x07r\xff\xff\xff\xff" "0j\xff\xff\xff\xff.";
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->root->i, 7);
}

TEST(Unpickler, MemoBombHitsMemoCap) {
  std::string s = "\x80\x02N";
  for (uint32_t i = 0; i < 2000; ++i) {
    s += 'r';
    s.append(reinterpret_cast<const char*>(&i), 4);
  }
  s += '.';
  UnpickleOptions o;
  o.max_memo = 1000;
  auto r = Load(s, Mode::kStrict, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r.status().message().find("LONG_BINPUT: memo larger than 1000"), std::string::npos)
      << r.status().message();
}

TEST(Unpickler, ValueCapStopsAllocationFloods) {
  std::string s = "\x80\x02" + std::string(100000, ']') + ".";
  UnpickleOptions o;
  o.max_values = 5000;
  auto r = Load(s, Mode::kStrict, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
}

TEST(Unpickler, StackUnderflowAndBadMemoAreDataLoss) {
  for (std::string s : {std::string("\x80\x02t."), std::string("\x80\x02R."), std::string("\x80\x02h\x05."),
                        std::string("\x80\x02(K\x01K\x02u."), std::string("\x80\x02K\x01K\x02\x61."),
                        std::string("\x80\x02\xff."), std::string("\x80\x02N(b.")}) {
    auto r = Load(s, Mode::kInspect);
    ASSERT_FALSE(r.ok()) << s;
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
    EXPECT_NE(r.status().message().find("test.pkl: offset "), std::string::npos)
        << r.status().message();
  }
}

TEST(Unpickler, UnsupportedFeaturesAreUnimplemented) {
  for (std::string s : {std::string("\x80\x02\x82\x01."), std::string("\x80\x05\x97."),
                        std::string("\x80\x06N.")}) {
    auto r = Load(s, Mode::kInspect);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kUnimplemented) << r.status().ToString();
  }
}

TEST(Unpickler, RecursiveStructuresLoadAsCycles) {
  std::string bytes = ReadSourceFile("tests/unit/pickle/testdata/recursive_p2.pkl");
  auto r = Load(bytes);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Value* lst = r->root->items()[0];
  ASSERT_EQ(lst->items().size(), 1u);
  EXPECT_EQ(lst->items()[0], lst);
  EXPECT_NE(Repr(r->root).find("<cycle>"), std::string::npos);
}


namespace reducing {

// Pieces of protocol-4 streams for the reducer tests.
std::string Str(std::string_view s) { return "\x8c"s + static_cast<char>(s.size()) + std::string(s); }
const std::string kCls = "cm\nC\n";                      // GLOBAL m.C (outside any object)
std::string Obj(int x) {                                  // m.C() with BUILD {'x': x}
  return kCls + ")\x81}(" + Str("x") + "K" + static_cast<char>(x) + "ub";
}

constexpr AllowedGlobal kAllowM[] = {{"m", "*"}};
constexpr std::string_view kReduced[] = {"C"};

struct Counting {
  int calls = 0;
  Reducer reducer;
  UnpickleOptions opts;
  Counting() {
    reducer.class_names = kReduced;
    reducer.reduce = [this](std::string_view, std::span<const Field> fields) -> std::optional<int64_t> {
      ++calls;
      for (const Field& f : fields) {
        if (f.name == "x" && f.type == Field::Type::kInt) return f.i * 10;
      }
      return std::nullopt;
    };
    opts.extra_allowed = kAllowM;
    opts.reducer = &reducer;
  }
};

TEST(UnpicklerReducer, ReplacesEachObjectWithAStandInAndReusesItsValues) {
  std::string s = "\x80\x04]("s + Obj(1) + Obj(2) + Obj(3) + "e.";
  Counting c;
  auto r = Load(s, Mode::kStrict, c.opts);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(c.calls, 3);
  ASSERT_EQ(r->root->kind, Kind::kList);
  ASSERT_EQ(r->root->items().size(), 3u);
  for (int k = 0; k < 3; ++k) {
    const Value* v = r->root->items()[k];
    EXPECT_EQ(v->kind, Kind::kInt);
    EXPECT_TRUE(v->reduced);
    EXPECT_EQ(v->i, (k + 1) * 10);
  }
  // Nothing of the objects is left in the result: no object, dict or 'x'.
  int objects = 0;
  r->arena->ForEach([&](const Value& v) { objects += v.kind == Kind::kObject || v.kind == Kind::kDict; });
  EXPECT_EQ(objects, 0);

  // Without the reducer the same stream reads as three objects.
  auto plain = Load(s, Mode::kStrict, UnpickleOptions{.extra_allowed = kAllowM});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->root->items()[2]->kind, Kind::kObject);
  EXPECT_EQ(plain->root->items()[2]->state()->Get("x")->i, 3);
}

TEST(UnpicklerReducer, KeepsAnObjectWhoseValueALaterGetReads) {
  // The key 'x' is memoized inside the object (BINPUT 1) and read after it.
  std::string s = "\x80\x04]("s + kCls + ")\x81}(" + Str("x") + "q\x01K\x05ub" + "h\x01" + Obj(6) + "e.";
  Counting c;
  auto r = Load(s, Mode::kStrict, c.opts);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(c.calls, 1);  // only the second object
  ASSERT_EQ(r->root->items().size(), 3u);
  const Value* kept = r->root->items()[0];
  ASSERT_EQ(kept->kind, Kind::kObject);
  EXPECT_EQ(kept->state()->Get("x")->i, 5);
  EXPECT_EQ(r->root->items()[1]->str(), "x");
  EXPECT_TRUE(r->root->items()[2]->reduced);
  EXPECT_EQ(r->root->items()[2]->i, 60);
}

TEST(UnpicklerReducer, KeepsAnObjectWhileWhichAnEarlierContainerChanged) {
  // The outer list (memo 0) gets 7 appended from inside the object's state:
  // its new storage was allocated while the object was being built.
  std::string s = "\x80\x04]q\x00("s + kCls + ")\x81}h\x00K\x07"s + "a0(" + Str("x") + "K\x01ub" + "e.";
  Counting c;
  auto r = Load(s, Mode::kStrict, c.opts);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(c.calls, 0);
  ASSERT_EQ(r->root->items().size(), 2u);
  EXPECT_EQ(r->root->items()[0]->i, 7);
  ASSERT_EQ(r->root->items()[1]->kind, Kind::kObject);
  EXPECT_EQ(r->root->items()[1]->state()->Get("x")->i, 1);
}

TEST(UnpicklerReducer, KeepsObjectsPoppedOrUnfinishedAtStop) {
  Counting c;
  // Appended to the list before any BUILD.
  auto popped = Load("\x80\x04](" + kCls + ")\x81" + "e.", Mode::kStrict, c.opts);
  ASSERT_TRUE(popped.ok()) << popped.status().ToString();
  ASSERT_EQ(popped->root->items().size(), 1u);
  EXPECT_EQ(popped->root->items()[0]->kind, Kind::kObject);
  // The stream stops inside the object.
  auto stopped = Load("\x80\x04" + kCls + ")\x81}" + ".", Mode::kStrict, c.opts);
  ASSERT_TRUE(stopped.ok()) << stopped.status().ToString();
  EXPECT_EQ(stopped->root->kind, Kind::kDict);
  // A state dict with a global made inside it.
  auto global = Load("\x80\x04" + kCls + ")\x81}(" + Str("x") + "cm\nD\nub.", Mode::kStrict, c.opts);
  ASSERT_TRUE(global.ok()) << global.status().ToString();
  EXPECT_EQ(global->root->kind, Kind::kObject);
  EXPECT_TRUE(global->root->state()->Get("x")->is_global("m", "D"));
  EXPECT_EQ(c.calls, 0);
}

TEST(UnpicklerReducer, ErrorsInsideAnObjectAreReportedAsWithout) {
  Counting c;
  auto r = Load("\x80\x04" + kCls + ")\x81}(" + Str("x") + "h\x09ub.", Mode::kStrict, c.opts);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("memo key 9 was never stored"), std::string::npos) << r.status().ToString();
}

TEST(UnpicklerReducer, TheMemoScanStepsOverEveryOperandAsTheVmReadsIt) {
  // Between an object whose 'x' is memoized (BINPUT 1) and the BINGET 1 that
  // reads it back: every kind of operand the scan steps over by its table
  // (fixed sizes, 1- and 4-byte lengths, GETs), with operand bytes that look
  // like opcodes ('h' = BINGET, 'j' = LONG_BINGET, 0x94 = MEMOIZE). Had the
  // scan stepped into an operand, it would miss a GET: the first object would
  // be reduced and BINGET 1 would fail. The second object is reduced (the scan
  // succeeded). Run from a resident source and through the 256 KiB read
  // buffer, with 300 KB of small opcodes and a 300 KB payload crossing its ends.
  const std::string filler = "K" "h"s                                  // BININT1 104
                             + "M" "h\x01"s                            // BININT2 0x0168
                             + "J" "h\x01h\x01"s                       // BININT 0x01680168
                             + "G" "hhhhjjjj"s                         // BINFLOAT
                             + "\x8a\x01" "h"s                         // LONG1 104
                             + "\x8c\x03" "h\x01\x94"s                 // SHORT_BINUNICODE
                             + "C\x02" "j\x01"s                        // SHORT_BINBYTES
                             + "X\x04\x00\x00\x00" "h\x01h\x01"s       // BINUNICODE
                             + "B\x03\x00\x00\x00" "jjj"s              // BINBYTES
                             + "h\x03" "j\x03\x00\x00\x00"s;           // BINGET, LONG_BINGET of 'g'
  std::string small_ops;
  for (int i = 0; i < 150000; ++i) small_ops += "K\x07";
  const std::string big(300000, 'h');
  const std::string s = "\x80\x04]("s + Str("g") + "q\x03" +                           // 'g' at key 3
                        kCls + ")\x81}(" + Str("x") + "q\x01K\x05ub" +                   // 'x' at key 1
                        filler + "(" + small_ops + "1" +                                // POP_MARK drops them
                        "B" + std::string("\xe0\x93\x04\x00", 4) + big +                // BINBYTES 300000
                        "h\x01" + Obj(6) + "e.";
  for (bool buffered : {false, true}) {
    SCOPED_TRACE(buffered ? "buffered" : "resident");
    Counting c;
    c.opts.mode = Mode::kStrict;
    NoDataSource nodata(s);
    SpanSource resident(s.data(), s.size(), "test.pkl");
    auto r = buffered ? Unpickle(nodata, 0, c.opts) : Unpickle(resident, 0, c.opts);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(c.calls, 1);  // only the second object
    const auto items = r->root->items();
    ASSERT_EQ(items.size(), 16u);
    EXPECT_EQ(items[0]->str(), "g");
    ASSERT_EQ(items[1]->kind, Kind::kObject);  // kept: its 'x' is read later
    EXPECT_EQ(items[1]->state()->Get("x")->i, 5);
    EXPECT_EQ(items[2]->i, 104);
    EXPECT_EQ(items[3]->i, 0x0168);
    EXPECT_EQ(items[4]->i, 0x01680168);
    EXPECT_EQ(items[5]->kind, Kind::kFloat);
    EXPECT_EQ(items[6]->i, 104);
    EXPECT_EQ(items[7]->str(), "h\x01\x94"s);
    EXPECT_EQ(items[8]->str(), "j\x01"s);
    EXPECT_EQ(items[9]->str(), "h\x01h\x01"s);
    EXPECT_EQ(items[10]->str(), "jjj");
    EXPECT_EQ(items[11], items[0]);
    EXPECT_EQ(items[12], items[0]);
    EXPECT_EQ(items[13]->str().size(), big.size());
    EXPECT_EQ(items[14]->str(), "x");  // BINGET 1
    EXPECT_TRUE(items[15]->reduced);
    EXPECT_EQ(items[15]->i, 60);
  }
}

// Streams of objects in the usual form (a GET of the class, EMPTY_TUPLE,
// NEWOBJ, one SETITEMS into an EMPTY_DICT, BUILD), counting the MEMOIZEs.
struct Flat {
  std::string s = "\x80\x04"s;
  int memo = 0;
  Flat& M() {
    s += '\x94';
    ++memo;
    return *this;
  }
  Flat& Add(std::string_view bytes) {
    s += bytes;
    return *this;
  }
  // Globals and a key, each memoized and popped: m.C at key 2, m.D at 5,
  // torch.Size at 8, 'a' at 9.
  Flat() {
    Add(Str("m")).M().Add(Str("C")).M().Add("\x93").M().Add("0");
    Add(Str("m")).M().Add(Str("D")).M().Add("\x93").M().Add("0");
    Add(Str("torch")).M().Add(Str("Size")).M().Add("\x93").M().Add("0");
    Add(Str("a")).M().Add("0");
    Add("(](");
  }
  static std::string Int(int64_t v) {  // the smallest of BININT1 / BININT2 / BININT
    if (v >= 0 && v < 256) return "K"s + static_cast<char>(v);
    if (v >= 0 && v < 65536) return "M"s + static_cast<char>(v & 0xff) + static_cast<char>(v >> 8);
    std::string out = "J";
    for (int k = 0; k < 4; ++k) out += static_cast<char>((static_cast<uint32_t>(v) >> (8 * k)) & 0xff);
    return out;
  }
  Flat& Size(std::vector<int64_t> dims) {  // torch.Size(dims) as torch pickles it
    Add("h\x08");
    if (dims.size() > 3) Add("(");
    for (int64_t d : dims) Add(Int(d));
    if (dims.size() > 3) {
      Add("t");
    } else {
      Add(dims.empty() ? ")"s : std::string(1, static_cast<char>(0x84 + dims.size())));
    }
    return M().Add("\x85").M().Add("R").M();
  }
  Flat& Key(std::string_view k) { return Add(Str(k)).M(); }
  Flat& Begin(const std::string& get_cls = "h\x02") { return Add(get_cls).Add(")\x81").M().Add("}").M().Add("("); }
  Flat& End() { return Add("ub"); }
  // Ends the list; then 'z' memoized and read back by its key (so a wrong
  // memo count shows), and the tuple (list, 'z').
  std::string Finish() {
    Add("e").Key("z");
    const uint32_t z = static_cast<uint32_t>(memo - 1);
    std::string get = "j";
    for (int k = 0; k < 4; ++k) get += static_cast<char>((z >> (8 * k)) & 0xff);
    return s + "0" + get + "t."s;
  }
};

// Records each object taken: the class and its fields as text, and whether the
// fields' str values point into the stream (read flat from a resident
// source) or not (read by the VM: copies in its arena).
struct Recording {
  std::vector<std::string> calls;
  int flat = 0;
  std::string_view stream;
  Reducer reducer;
  UnpickleOptions opts;
  explicit Recording(bool read_flat) {
    reducer.class_names = kReduced;
    reducer.reduce = [this](std::string_view cls, std::span<const Field> fields) -> std::optional<int64_t> {
      std::string text(cls);
      bool in_stream = false;
      for (const Field& f : fields) {
        text += " " + std::string(f.name) + ":" + std::to_string(static_cast<int>(f.type)) + "=";
        if (f.type == Field::Type::kInt) text += std::to_string(f.i);
        if (f.type == Field::Type::kString) {
          text += std::string(f.str);
          in_stream = in_stream || (f.str.data() >= stream.data() && f.str.data() < stream.data() + stream.size());
        }
        for (int64_t i : f.ints) text += std::to_string(i) + ",";
        for (std::string_view x : f.strs) text += std::string(x) + ",";
      }
      for (const Field& f : fields) {
        if (f.name == "keep") return std::nullopt;  // asked again of the VM after a flat read
      }
      flat += in_stream;
      calls.push_back(text);
      return static_cast<int64_t>(calls.size()) * 10;
    };
    opts.extra_allowed = kAllowM;
    opts.reducer = &reducer;
    opts.read_flat = read_flat;
  }
};

constexpr std::string_view kReducedCD[] = {"C", "D"};

// Reads s with and without flat reads; both give the same calls, fields,
// stand-ins and memo, and no error. Returns how many objects were read flat (resident
// sources only: a buffered flat read's strings are in the read buffer).
int FlatAndVmAgree(const std::string& s, bool buffered = false) {
  Recording flat(true), vm(false);
  flat.reducer.class_names = vm.reducer.class_names = kReducedCD;
  flat.stream = vm.stream = s;
  SpanSource resident(s.data(), s.size(), "flat.pkl");
  NoDataSource nodata(s);
  const ByteSource& src = buffered ? static_cast<const ByteSource&>(nodata) : resident;
  auto a = Unpickle(src, 0, flat.opts);
  auto b = Unpickle(src, 0, vm.opts);
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (!a.ok() || !b.ok()) return -1;
  EXPECT_EQ(Repr(a->root, 100000), Repr(b->root, 100000));
  EXPECT_EQ(flat.calls, vm.calls);
  EXPECT_EQ(vm.flat, 0);
  // Stand-ins are where the objects were, with the NEWOBJ's offset.
  const auto xs = a->root->items()[0]->items();
  const auto ys = b->root->items()[0]->items();
  EXPECT_EQ(xs.size(), ys.size());
  for (size_t i = 0; i < std::min(xs.size(), ys.size()); ++i) {
    EXPECT_EQ(xs[i]->reduced, ys[i]->reduced) << i;
    EXPECT_EQ(xs[i]->offset, ys[i]->offset) << i;
  }
  EXPECT_EQ(a->root->items()[1]->str(), "z");
  return flat.flat;
}

TEST(UnpicklerFlat, ReadsTheUsualFormWithoutTheVmAndAsItWould) {
  Flat f;
  // Sizes of 0..5 dimensions (EMPTY_TUPLE, TUPLE1..3, MARK .. TUPLE), the
  // three int opcodes (a negative one too), None, str values inline and from
  // the memo, keys inline and from the memo, the class by LONG_BINGET.
  for (size_t n = 0; n <= 5; ++n) {
    std::vector<int64_t> dims;
    for (size_t k = 0; k < n; ++k) dims.push_back(static_cast<int64_t>(k * 300 + 7));
    f.Begin().Key("p").Key("__0_0.distcp").Key("offsets").Size(dims).Key("sizes").Size({1, 70000, 255}).End();
  }
  f.Begin().Key("p").Key("x.distcp").Add("h\x09").Add(Flat::Int(-5)).Key("n").Add("N").Key("s").Add("h\x09").End();
  f.Begin("j\x05\x00\x00\x00"s).Key("p").Key("y").Key("big").Add(Flat::Int(1 << 30)).End();
  // Shared leaves first met inside the objects (None, the empty tuple, small
  // ints): the VM makes them where it first reads them, so do flat reads;
  // FlatAndVmAgree compares these items' offsets.
  f.Add("N").Add(Flat::Int(7)).Add(")").Add(Flat::Int(1207)).Add(Flat::Int(70000));
  EXPECT_EQ(FlatAndVmAgree(f.Finish()), 8);
}

TEST(UnpicklerFlat, LeavesEveryOtherFormToTheVm) {
  struct Case {
    const char* what;
    std::function<void(Flat&)> object;
    int flat;
  };
  const std::vector<Case> cases = {
      {"usual", [](Flat& f) { f.Begin().Key("p").Key("v").End(); }, 1},
      {"bool value", [](Flat& f) { f.Begin().Key("p").Key("v").Key("b").Add("\x88").End(); }, 0},
      {"list of str", [](Flat& f) { f.Begin().Key("p").Key("v").Key("l").Add("]").M().Add("(").Key("s").Key("t").Add("e").End(); }, 0},
      {"name twice", [](Flat& f) { f.Begin().Key("p").Key("v").Key("x").Add("K\x01").Add("h\x09").Add("K\x02").Add("h\x09").Add("K\x03").End(); }, 0},
      {"a later GET reads its key", [](Flat& f) {
         f.Begin().Key("p").Key("v").Key("q").Add("K\x01").End();
         f.Add("h").Add(std::string(1, static_cast<char>(f.memo - 1)));  // 'q'
       }, 0},
      {"reducer keeps it", [](Flat& f) { f.Begin().Key("p").Key("v").Key("keep").Add("N").End(); }, 0},
      {"frame inside", [](Flat& f) { f.Begin().Key("p").Add("\x95\x01\x00\x00\x00\x00\x00\x00\x00"s).Key("v").End(); }, 0},
      {"not a reduced class", [](Flat& f) { f.Add("h\x08").Add("K\x01\x85R").M(); }, 0},
      {"args not empty", [](Flat& f) { f.Add("h\x02").Add("K\x01\x85\x81").M().Add("}").M().Add("(").Key("p").Key("v").End(); }, 0},
      {"SETITEM of one", [](Flat& f) { f.Add("h\x02)\x81").M().Add("}").M().Key("p").Key("v").Add("sb"); }, 0},
      {"another class's object inside", [](Flat& f) {
         f.Begin().Key("p").Key("v").Key("o").Add("h\x05)\x81").M().Add("}").M().Add("(").Key("w").Add("K\x01").End().End();
       }, 0},
      {"size of a str", [](Flat& f) { f.Begin().Key("p").Key("v").Key("s").Add("h\x08").Key("n").Add("\x85").M().Add("\x85").M().Add("R").M().End(); }, 0},
      {"size with a MARK and three", [](Flat& f) { f.Begin().Key("p").Key("v").Key("s").Add("h\x08(K\x01K\x02K\x03t").M().Add("\x85").M().Add("R").M().End(); }, 1},
      {"more ints than a flat read holds", [](Flat& f) {
         f.Begin().Key("p").Key("v").Key("s").Add("h\x08(");
         for (int k = 0; k < 65; ++k) f.Add("K\x01");
         f.Add("t").M().Add("\x85").M().Add("R").M().End();
       }, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Flat f;
    c.object(f);
    f.Begin().Key("p").Key("after").End();  // the next object reads flat again
    EXPECT_EQ(FlatAndVmAgree(f.Finish()), c.flat + 1);
  }
  // The same error both ways: a truncated object, a GET of a key never stored.
  for (const std::string& bad : {"h\x02)\x81\x94}\x94(\x8c\x01p\x94\x8c"s, "h\x02)\x81\x94}\x94(h\x7fK\x01ub"s}) {
    Flat f;
    f.Add(bad);
    Recording flat(true), vm(false);
    SpanSource src(f.s.data(), f.s.size(), "bad.pkl");
    auto a = Unpickle(src, 0, flat.opts);
    auto b = Unpickle(src, 0, vm.opts);
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.status().ToString(), b.status().ToString());
  }
}

TEST(UnpicklerFlat, ObjectsAcrossTheReadBufferAreReadByTheVmAndAgree) {
  // 300 KB of objects, resident and through the 256 KiB read buffer (the one
  // that crosses its end is left to the VM).
  Flat f;
  int objects = 0;
  while (f.s.size() < 300000) {
    f.Begin().Key("p").Key("__" + std::to_string(objects % 7) + "_0.distcp").Add("h\x09").Size({objects, 3}).End();
    ++objects;
  }
  const std::string s = f.Finish();
  EXPECT_EQ(FlatAndVmAgree(s, false), objects);
  FlatAndVmAgree(s, true);
}

}  // namespace reducing

TEST(Unpickler, MemoizeCountsKeysAsPythonDoesWhenValuesAreNotKept) {
  // PUT 5 then MEMOIZE: len(memo) is 1, so MEMOIZE stores at 1; then PUT 0
  // twice (the second does not change len(memo)) and MEMOIZE stores at 3.
  // Python's pickle.loads gives ('a', 'a', 'b').
  std::string s = "\x80\x04"s + reducing::Str("a") + "q\x05\x94" + "0" + reducing::Str("b") + "q\x00q\x00\x94"s +
                  "0(h\x01h\x05h\x03t.";
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->root->items().size(), 3u);
  EXPECT_EQ(r->root->items()[0]->str(), "a");
  EXPECT_EQ(r->root->items()[1]->str(), "a");
  EXPECT_EQ(r->root->items()[2]->str(), "b");
}

TEST(Unpickler, MemoizeCountsAFarKeyOnceWhenLaterKeysReachIt) {
  // LONG_BINPUT 2000 first (far past the keys in order), then 1999 MEMOIZEs
  // fill keys 1..1999, so len(memo) is 2000 and the next two MEMOIZEs both
  // store at key 2000. Python's pickle.loads gives ('y', 'k1500').
  auto le32 = [](uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  std::string s = "\x80\x04"s + reducing::Str("a") + "r" + le32(2000) + "0";
  for (int i = 1; i < 2000; ++i) s += reducing::Str("k" + std::to_string(i)) + "\x94" + "0";
  s += reducing::Str("z") + "\x94" + "0" + reducing::Str("y") + "\x94" + "0";
  s += "(j" + le32(2000) + "j" + le32(1500) + "t.";
  auto r = Load(s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->root->items().size(), 2u);
  EXPECT_EQ(r->root->items()[0]->str(), "y");
  EXPECT_EQ(r->root->items()[1]->str(), "k1500");
}

}  // namespace
}  // namespace ckpt::pickle
