// The JSON grammar shared by a study's sections (study_json.hpp).
#include "lowbit/explore/study_json.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lowbit/base/error.hpp"

namespace lowbit {

void refuse_unknown_keys(const nlohmann::json& j, const std::vector<std::string>& keys, const std::string& where) {
  if (!j.is_object()) throw error(fmt::format("{}: expected an object", where));
  for (const auto& [k, v] : j.items())
    if (std::find(keys.begin(), keys.end(), k) == keys.end())
      throw error(fmt::format("{}: unknown key '{}' (expected {})", where, k, fmt::join(keys, ", ")));
}

}  // namespace lowbit
