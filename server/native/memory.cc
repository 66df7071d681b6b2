/*
 * Giving a burst's memory back to the system, for Node (server/trim-when-quiet.ts calls both, in this order):
 *
 *   reduce() -> undefined   V8's low-memory notification: the full collections V8 itself runs to shrink the
 *                           heap (its memory reducer does, some seconds to a minute after allocation slows).
 *                           An ordinary full collection leaves more alive: after a push into S3 the server's
 *                           ArrayBuffer memory stayed at 40-75 MB through five of them, and fell to ~22 MB at
 *                           the memory reducer's collection or a heap snapshot's (BENCHMARKS.md, session 25).
 *   trim() -> boolean       glibc's malloc_trim(0); true when some memory went back to the system; false when
 *                           none could, or the C library is not glibc (then there is nothing to call).
 *
 * Why trim: Node allocates Buffer contents, zstd contexts and socket buffers with malloc. After a burst of
 * uploads glibc keeps the freed pages of its arenas mapped for reuse, and gives back only what lies at the top
 * of the main heap: the process keeps the burst's resident size while it idles (measured here: after the
 * benchmark closure, 530 MiB of NAR, was pushed, an ordinary full collection and this trim gave back 13-33 MiB
 * from a server on PostgreSQL + S3, 13-21 MiB from one on SQLite; with reduce() first, 31-71 MiB and 32-38 MiB;
 * BENCHMARKS.md, session 25). malloc_trim(0) also releases whole free pages inside every arena (madvise
 * MADV_DONTNEED), which the next allocations take back from the kernel as needed.
 *
 * N-API for the module; V8's own API for the notification (N-API has none), so this addon is built against
 * the Node that runs it, as `npm ci` builds it.
 */
#include <node_api.h>
#include <v8.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value reduce(napi_env env, napi_callback_info info) {
  (void)env;
  (void)info;
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
  return nullptr;
}

static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  bool released = false;
#ifdef __GLIBC__
  released = malloc_trim(0) != 0;
#endif
  napi_value result;
  if (napi_get_boolean(env, released, &result) != napi_ok) return nullptr;
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "reduce", NAPI_AUTO_LENGTH, reduce, nullptr, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "reduce", fn) != napi_ok ||
      napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, nullptr, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "trim", fn) != napi_ok) {
    napi_throw_error(env, nullptr, "memory addon: init failed");
    return nullptr;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
