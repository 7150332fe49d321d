// The JSON grammar shared by a study's sections (sweep.hpp, family.hpp).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowbit {

// Refuses a j that is not an object, or that has a key not among `keys` (lowbit::error naming
// `where`, the key and the keys expected, in the order given).
void refuse_unknown_keys(const nlohmann::json& j, const std::vector<std::string>& keys, const std::string& where);

}  // namespace lowbit
