/*
 * Returning the C heap's free memory to the system, for Node: glibc's malloc_trim(0).
 *
 *   trim() -> boolean     true when some memory went back to the system; false when none could, or the C
 *                         library is not glibc (then there is nothing to call)
 *
 * Why: Node allocates Buffer contents, zstd contexts and socket buffers with malloc. After a burst of uploads
 * glibc keeps the freed pages of its arenas mapped for reuse, and gives back only what lies at the top of the
 * main heap: the process keeps the burst's resident size while it idles (measured here: after the benchmark
 * closure, 530 MiB of NAR, was pushed, 13-33 MiB of such pages went back from a server on PostgreSQL + S3,
 * 13-21 MiB from one on SQLite; BENCHMARKS.md, session 25).
 * malloc_trim(0) also releases whole free pages inside every arena (madvise MADV_DONTNEED), which the next
 * allocations take back from the kernel as needed.
 */
#include <node_api.h>
#include <stdbool.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  bool released = false;
#ifdef __GLIBC__
  released = malloc_trim(0) != 0;
#endif
  napi_value result;
  if (napi_get_boolean(env, released, &result) != napi_ok) return NULL;
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "trim", fn) != napi_ok) {
    napi_throw_error(env, NULL, "memory addon: init failed");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
