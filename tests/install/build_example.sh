#!/usr/bin/env bash
# The installed package is enough to build a program outside the tree: `cmake --install`
# into a scratch prefix, examples/caption_image configured with find_package(minigpt4)
# against it, built, and run on the fixture model; its answer must be the one
# `minigpt4 chat` gives for the same picture and question (greedy).
#   build_example.sh <build dir> <source dir> <torch folder> <minigpt4 binary>
set -euo pipefail
build=$1 source=$2 torch_dir=$3 binary=$4
prefix="$build/example/install"
rm -rf "$build/example"
cmake --install "$build" --prefix "$prefix" > "$build/example-install.log"
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S "$source/examples/caption_image" -B "$build/example/build" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix;$torch_dir"
cmake --build "$build/example/build"

cd "$source"  # the fixture config's paths are relative to the repository root
config=configs/tiny_vicuna0.yaml
image=tests/data/parity/tiny_vicuna0/image_processor/ladybird_640x400.jpg
question="What is in this picture?"
example=$("$build/example/build/caption_image" "$config" "$image" "$question")
reference=$("$binary" chat --cfg-path "$config" --image "$image" --prompt "$question" --temperature 0 \
  --max-new-tokens 40 2> /dev/null)
echo "example:   $example"
echo "reference: $reference"
[ -n "$example" ] || { echo "the example printed no answer"; exit 1; }
[ "$example" = "$reference" ] || { echo "the example's answer differs from minigpt4 chat's"; exit 1; }
[ -f "$prefix/lib/cmake/minigpt4/minigpt4Config.cmake" ] && [ -f "$prefix/include/minigpt4/chat/chat.h" ]
echo "installed package: $(find "$prefix" -type f | wc -l) files; example built and answered as minigpt4 chat"
