// The sendfile(2) addon (server/native/sendfile.c, built by `npm ci`): a byte range of a file sent to a socket
// by the kernel, from the page cache, without passing through this process. FileBody uses it for NAR
// downloads from local storage when it can (a plain TCP socket Node has nothing queued on); without the addon
// (installed with --ignore-scripts, or a platform without sendfile) it copies through buffers, as before.
import { loadAddon } from "./native-addon.ts";

interface Addon {
  start(
    socketFd: number,
    fileFd: number,
    offset: number,
    length: number,
    done: (errno: number, sent: number) => void,
  ): object;
  cancel(handle: object): void;
}

const loaded = loadAddon<Addon>("sendfile");
/** Why the addon is not there (start.ts logs it once), or undefined when it is. */
export const sendfileUnavailable = loaded.error;

export class SendfileError extends Error {
  constructor(readonly errno: number) {
    super(`sendfile failed (errno ${errno})`);
  }
}

/** What a send that was started returns: its end (bytes sent), and a way to stop it early. */
export interface Sending {
  /** Resolves with the bytes sent once the range is sent; rejects with a SendfileError otherwise. */
  done: Promise<number>;
  /** Stops it (the peer went away): `done` then rejects with ECANCELED. */
  cancel(): void;
}

/** Sends started and how many of them failed (a peer going away counts), since the process started. */
export const sendfileCounts = { started: 0, failed: 0 };

/** Starts sending `length` bytes of `fileFd` from `offset` to `socketFd`; undefined without the addon. */
export function startSendfile(
  socketFd: number,
  fileFd: number,
  offset: number,
  length: number,
): Sending | undefined {
  const addon = loaded.addon;
  if (!addon) return undefined;
  let handle: object | undefined;
  const done = new Promise<number>((resolve, reject) => {
    handle = addon.start(socketFd, fileFd, offset, length, (errno, sent) => {
      if (errno === 0) resolve(sent);
      else {
        sendfileCounts.failed++;
        reject(new SendfileError(errno));
      }
    });
  });
  sendfileCounts.started++;
  return { done, cancel: () => addon.cancel(handle!) };
}
