#pragma once
// Base64 (RFC 4648, standard alphabet) for the images clients send inside data URIs. No
// library the project already links offers a decoder (httplib has only an encoder in its
// detail namespace), and a strict one is short.
#include <string>
#include <string_view>

namespace minigpt4::server {

// Decodes standard base64. '=' padding is optional, but only at the end; white space, the
// URL-safe alphabet ('-', '_') and anything after the padding are refused with
// minigpt4::Error naming the offset, so a mangled upload fails instead of becoming noise.
std::string base64_decode(std::string_view text);

// Standard base64 with padding.
std::string base64_encode(std::string_view bytes);

}  // namespace minigpt4::server
