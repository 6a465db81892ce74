# Writes ${OUTPUT} defining minigpt4::builtin_model_configs() from configs/models/*.yaml, so
# the binary carries its model defaults wherever it is installed or run from.
function(minigpt4_embed_model_configs OUTPUT)
  file(GLOB _yamls CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/configs/models/*.yaml)
  set(_body "")
  foreach(_yaml ${_yamls})
    get_filename_component(_name ${_yaml} NAME)
    file(READ ${_yaml} _text)
    string(APPEND _body "      {\"${_name}\", R\"minigpt4yaml(${_text})minigpt4yaml\"},\n")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_yaml})
  endforeach()
  file(CONFIGURE OUTPUT ${OUTPUT} CONTENT "// Generated from configs/models/*.yaml by cmake/EmbedConfigs.cmake.
#include \"minigpt4/common/config.h\"

namespace minigpt4 {
const std::vector<std::pair<std::string, std::string>>& builtin_model_configs() {
  static const std::vector<std::pair<std::string, std::string>> files = {
${_body}  };
  return files;
}
}  // namespace minigpt4
" @ONLY)
endfunction()
