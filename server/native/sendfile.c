/*
 * sendfile(2) for Node: sends a byte range of an open file to a TCP socket that node:http owns, from the
 * kernel's page cache straight to the socket, without copying the bytes through the process (as nginx does
 * with `sendfile on`). Node has no such call; reading a file into buffers and writing them out costs one Node
 * process 1.5-2.8x nginx's time on the same downloads here (BENCHMARKS.md, issue 7).
 *
 *   start(socketFd, fileFd, offset, length, done) -> handle     done(errno, bytesSent), once, on the loop
 *   cancel(handle)                                              stops early; done then gets ECANCELED
 *
 * How it shares the socket with Node: the caller starts it only when Node has nothing queued on the socket
 * and writes nothing to it until `done`. It works on a dup(2) of the socket's descriptor, watched for
 * writability by a uv_poll_t of its own (libuv allows one watcher per descriptor number; a dup is a second
 * number for the same socket), and calls sendfile on that non-blocking socket until it would block, the
 * range is sent, or an error comes. The dup keeps the socket open while it runs even if Node closes its own
 * descriptor, so bytes can never go to a descriptor number reused by another connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <unistd.h>
#include <uv.h>

/* Most bytes one writability callback sends before it lets the loop run other work. */
#define PER_TURN (16 * 1024 * 1024)
/* Most bytes one sendfile call is asked for. */
#define PER_CALL (4 * 1024 * 1024)

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref done;   /* the JS callback */
  napi_ref handle; /* the external JS holds; strong while running, so the job outlives its uv handle */
  napi_async_context async;
  int sock;        /* our dup of the socket's descriptor */
  int file;        /* the file's descriptor, borrowed from the caller */
  off_t offset;
  int64_t left;
  int64_t sent;
  int error;       /* errno to report; 0 = all sent */
  int finishing;
} job_t;

#define CHECK(env, call)                                                   \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error((env), NULL, "sendfile addon: " #call " failed");   \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

static void on_closed(uv_handle_t *h) {
  job_t *job = (job_t *)h->data;
  napi_env env = job->env;
  close(job->sock);
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value fn, recv, argv[2];
  napi_get_reference_value(env, job->done, &fn);
  napi_get_global(env, &recv); /* napi_make_callback needs an object as the receiver */
  napi_create_int32(env, job->error, &argv[0]);
  napi_create_int64(env, job->sent, &argv[1]);
  napi_delete_reference(env, job->done);
  napi_async_context async = job->async;
  /* From here the job may be freed by the external's finalizer once JS lets go of the handle. */
  napi_delete_reference(env, job->handle);
  napi_value result;
  napi_make_callback(env, async, recv, fn, 2, argv, &result);
  napi_async_destroy(env, async);
  napi_close_handle_scope(env, scope);
}

static void finish(job_t *job, int error) {
  if (job->finishing) return;
  job->finishing = 1;
  job->error = error;
  uv_poll_stop(&job->poll);
  uv_close((uv_handle_t *)&job->poll, on_closed);
}

static void on_writable(uv_poll_t *poll, int status, int events) {
  job_t *job = (job_t *)poll->data;
  (void)events;
  if (status < 0) {
    finish(job, -status);
    return;
  }
  int64_t this_turn = 0;
  while (job->left > 0 && this_turn < PER_TURN) {
    size_t ask = job->left < PER_CALL ? (size_t)job->left : PER_CALL;
    ssize_t n = sendfile(job->sock, job->file, &job->offset, ask);
    if (n > 0) {
      job->left -= n;
      job->sent += n;
      this_turn += n;
    } else if (n == 0) {
      finish(job, EIO); /* the file is shorter than the range: it changed under us */
      return;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return; /* the socket's buffer is full: wait for the next writability */
    } else {
      finish(job, errno);
      return;
    }
  }
  if (job->left == 0) finish(job, 0);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) {
    napi_throw_type_error(env, NULL, "start(socketFd, fileFd, offset, length, done)");
    return NULL;
  }
  int32_t sock, file;
  int64_t offset, length;
  CHECK(env, napi_get_value_int32(env, argv[0], &sock));
  CHECK(env, napi_get_value_int32(env, argv[1], &file));
  CHECK(env, napi_get_value_int64(env, argv[2], &offset));
  CHECK(env, napi_get_value_int64(env, argv[3], &length));
  napi_valuetype type;
  CHECK(env, napi_typeof(env, argv[4], &type));
  if (sock < 0 || file < 0 || offset < 0 || length < 0 || type != napi_function) {
    napi_throw_type_error(env, NULL, "start: bad descriptor, range or callback");
    return NULL;
  }
  int dup_sock = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (dup_sock < 0) {
    napi_throw_error(env, NULL, "start: cannot duplicate the socket's descriptor");
    return NULL;
  }
  job_t *job = calloc(1, sizeof(job_t));
  if (!job) {
    close(dup_sock);
    napi_throw_error(env, NULL, "start: out of memory");
    return NULL;
  }
  job->env = env;
  job->sock = dup_sock;
  job->file = file;
  job->offset = (off_t)offset;
  job->left = length;
  uv_loop_t *loop;
  napi_value handle, name;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &job->poll, dup_sock) != 0) {
    close(dup_sock);
    free(job);
    napi_throw_error(env, NULL, "start: cannot watch the socket");
    return NULL;
  }
  job->poll.data = job;
  /* From here the job is freed by the external's finalizer, after on_closed has let go of it. */
  CHECK(env, napi_create_external(env, job, finalize, NULL, &handle));
  CHECK(env, napi_create_reference(env, handle, 1, &job->handle));
  CHECK(env, napi_create_reference(env, argv[4], 1, &job->done));
  CHECK(env, napi_create_string_utf8(env, "nixstash:sendfile", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_async_init(env, NULL, name, &job->async));
  if (length == 0) {
    finish(job, 0);
  } else {
    int rc = uv_poll_start(&job->poll, UV_WRITABLE, on_writable);
    if (rc != 0) finish(job, -rc);
  }
  return handle;
}

static napi_value cancel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data;
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok) {
    napi_throw_type_error(env, NULL, "cancel(handle)");
    return NULL;
  }
  finish((job_t *)data, ECANCELED);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  CHECK(env, napi_create_function(env, "start", NAPI_AUTO_LENGTH, start, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "start", fn));
  CHECK(env, napi_create_function(env, "cancel", NAPI_AUTO_LENGTH, cancel, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "cancel", fn));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
