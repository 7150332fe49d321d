// Hugging Face's rope_scaling object <-> lowbit's rope_scale (hf_config.cpp), shared with the GGUF
// reader and writer, which carry a Llama 3.1 scaling's parameters as lowbit.rope_scaling.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "lowbit/engine/model.hpp"

namespace lowbit {

// j["rope_scaling"] (absent or null: none); throws naming `file` and the field for a type lowbit
// does not compute (it has linear and llama3) or a key the type does not have.
rope_scale rope_scaling_from_json(const nlohmann::json& j, const std::string& file);
// The rope_scaling object Hugging Face reads (r's type is not none).
nlohmann::json rope_scaling_to_json(const rope_scale& r);

}  // namespace lowbit
