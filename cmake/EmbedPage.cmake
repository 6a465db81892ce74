# Writes ${OUTPUT} defining minigpt4::server::page_html() from the web demo's HTML, so the
# binary serves its page wherever it is installed or run from. CMake re-runs (and the file
# is rewritten) when the page changes; an unchanged page leaves the output untouched.
function(minigpt4_embed_page INPUT OUTPUT)
  file(READ ${INPUT} _html)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${INPUT})
  string(FIND "${_html}" ")minigpt4page\"" _clash)
  if(NOT _clash EQUAL -1)
    message(FATAL_ERROR "${INPUT} contains the raw-string delimiter )minigpt4page\"")
  endif()
  # file(WRITE), not file(CONFIGURE): the page's CSS has '@' rules that must stay as they are.
  file(WRITE ${OUTPUT}.tmp "// Generated from ${INPUT} by cmake/EmbedPage.cmake.
#include \"minigpt4/server/page.h\"

namespace minigpt4::server {
const std::string& page_html() {
  static const std::string html = R\"minigpt4page(${_html})minigpt4page\";
  return html;
}
}  // namespace minigpt4::server
")
  file(COPY_FILE ${OUTPUT}.tmp ${OUTPUT} ONLY_IF_DIFFERENT)
  file(REMOVE ${OUTPUT}.tmp)
endfunction()
