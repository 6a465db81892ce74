// Describe one image with a MiniGPT-4 model: the smallest program built on the installed
// minigpt4-cpp package (find_package(minigpt4); see CMakeLists.txt next to this file).
//
//   caption_image <eval config.yaml> <image> ["question"]
//
// The config is any eval config `minigpt4 chat` takes (model: section with the weights).
#include <minigpt4/chat/chat.h>
#include <minigpt4/common/config.h>
#include <minigpt4/common/device.h>
#include <minigpt4/common/error.h>
#include <minigpt4/common/run_settings.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " <eval config.yaml> <image> [question]\n";
    return 2;
  }
  const std::string question = argc > 3 ? argv[3] : "Describe this image in detail.";
  try {
    const auto config = minigpt4::Config::load(argv[1]);
    const auto device = minigpt4::select_device(minigpt4::RunSettings::from_config(config).device, 0);
    const auto model = minigpt4::ChatModel::load(config, device);

    minigpt4::ChatSession chat(model);
    chat.upload_image(model->encode_image_file(argv[2]));
    chat.ask(question);
    minigpt4::AnswerOptions greedy;
    greedy.temperature = 0;  // the same answer every run
    greedy.max_new_tokens = 40;
    std::cout << chat.answer(greedy).text << "\n";
    return 0;
  } catch (const minigpt4::Error& e) {
    std::cerr << "caption_image: " << e.what() << "\n";
    return 1;
  }
}
