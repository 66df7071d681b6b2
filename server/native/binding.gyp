{
  "targets": [
    {
      "target_name": "sendfile",
      "sources": ["sendfile.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    },
    {
      "target_name": "memory",
      "sources": ["memory.cc"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
