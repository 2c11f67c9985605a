{
  "targets": [{
    "target_name": "rnode_native",
    "sources": [
      "src/addon.cc",
      "src/io_error.cc",
      "src/blocking_io.cc",
      "src/raw_io.cc",
      "src/buffers.cc",
      "src/vddk.cc",
      "src/lz4.cc",
      "src/file_write.cc",
      "src/chunk_io.cc",
      "src/xxh64.cc",
      "src/xxh3.cc",
      "src/cpu_clock.cc",
      "src/socket_queue.cc"
    ],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": [
      "NAPI_VERSION=8",
      "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS",
      "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
      "_FILE_OFFSET_BITS=64"
    ],
    "cflags_cc": ["-O2", "-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    "libraries": ["-ldl"]
  }]
}
