// libFuzzer harness: bytes as a pickle program, run with no hooks (a dataset pickle such as
// REFER's refs) and with torch-like hooks (persistent ids become storages, every REDUCE is
// offered to a hook that declines). A minigpt4::Error is a clean refusal; a crash, hang,
// huge allocation or any other exception is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/io/pickle.h"

namespace pickle = minigpt4::io::pickle;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    pickle::unpickle(data, size, {}, "fuzz.pkl");
  } catch (const minigpt4::Error&) {}
  pickle::Hooks hooks;
  hooks.persistent_load = [](const pickle::ValuePtr&) { return pickle::make(pickle::Value::Kind::Storage); };
  hooks.reduce = [](const std::string&, const pickle::ValuePtr&) -> pickle::ValuePtr { return nullptr; };
  try {
    pickle::unpickle(data, size, hooks, "fuzz.pkl");
  } catch (const minigpt4::Error&) {}
  return 0;
}
