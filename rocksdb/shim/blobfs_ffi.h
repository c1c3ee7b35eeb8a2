// The C ABI between the C++ shim (blobfs_fs.cc) and the Rust side (rocksdb/src/ffi.rs).
//
// The Rust side exports every function here; the shim only calls them. Paths are
// NUL-terminated byte strings inside the image ("/db/000012.sst"; relative paths are
// taken from the root). Functions returning int return 0 on success, else an errno
// (ENOENT, ENOSPC, EIO...) and fill `*err` (code + message naming the path) when `err`
// is not null. Every function is thread-safe; a file handle may be used from several
// threads at once (reads at offsets), but must be closed exactly once.
#ifndef BLOBFS_FFI_H
#define BLOBFS_FFI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// An error: errno-style code (0 = none) and a NUL-terminated message.
typedef struct BlobfsError {
  int32_t code;
  char msg[512];
} BlobfsError;

// One open filesystem (a reference to the process-wide mount of an image).
typedef struct BlobfsFs BlobfsFs;
// One open file (an inode held open; keeps its filesystem open too).
typedef struct BlobfsFile BlobfsFile;

// What blobfs_stat reports.
typedef struct BlobfsStat {
  // 1 regular file, 2 directory, 3 other (symlink, device node, ...).
  int32_t kind;
  uint64_t size;
  int64_t mtime_sec;
  uint32_t mtime_nsec;
} BlobfsStat;

enum {
  BLOBFS_KIND_FILE = 1,
  BLOBFS_KIND_DIR = 2,
  BLOBFS_KIND_OTHER = 3,
};

// How blobfs_file_open opens a file.
enum {
  // Read: the file must exist.
  BLOBFS_OPEN_READ = 0,
  // Write from the start: created if missing, truncated to 0 if it exists.
  BLOBFS_OPEN_TRUNCATE = 1,
  // Append: created if missing, the size kept.
  BLOBFS_OPEN_APPEND = 2,
};

// ---- filesystem ----

// Opens (or shares the process's open mount of) the image named by `uri`
// ("blobfs:///path/to/image"). Null on failure, with the reason in *err.
BlobfsFs* blobfs_fs_open(const char* uri, BlobfsError* err);
// Drops the reference; the last reference to a mount writes everything back, commits and
// closes the image.
void blobfs_fs_close(BlobfsFs* fs);
// The image's absolute path, NUL-terminated into buf (truncated to len); returns its length.
size_t blobfs_fs_image(const BlobfsFs* fs, char* buf, size_t len);
// Writes back and commits everything (like sync(2)).
int blobfs_fs_sync(const BlobfsFs* fs, BlobfsError* err);
// Bytes available for new data.
int blobfs_fs_free_space(const BlobfsFs* fs, uint64_t* out, BlobfsError* err);

// ---- namespace ----

// Attributes of `path` (ENOENT if missing).
int blobfs_stat(const BlobfsFs* fs, const char* path, BlobfsStat* out, BlobfsError* err);
// Calls cb(ctx, name, len) for every entry of directory `path` (base names, no . and ..).
int blobfs_children(const BlobfsFs* fs, const char* path,
                    void (*cb)(void* ctx, const char* name, size_t len), void* ctx,
                    BlobfsError* err);
// Creates directory `path`; with `parents`, missing parents too and an existing directory
// is fine (mkdir -p); without it, EEXIST if it exists.
int blobfs_mkdir(const BlobfsFs* fs, const char* path, int parents, BlobfsError* err);
// Removes the empty directory `path`.
int blobfs_rmdir(const BlobfsFs* fs, const char* path, BlobfsError* err);
// Removes the file `path`.
int blobfs_unlink(const BlobfsFs* fs, const char* path, BlobfsError* err);
// Renames `from` to `to`, atomically replacing an existing `to`.
int blobfs_rename(const BlobfsFs* fs, const char* from, const char* to, BlobfsError* err);
// Makes every namespace change so far durable (directory fsync): one commit.
int blobfs_sync_dir(const BlobfsFs* fs, const char* path, BlobfsError* err);
// Takes the in-process lock on `path` (creating the file if missing); EWOULDBLOCK with
// "lock hold by current process" if it is already held. (Other processes are kept out by
// the flock on the image itself.)
int blobfs_lock(const BlobfsFs* fs, const char* path, BlobfsError* err);
// Releases a lock taken with blobfs_lock.
int blobfs_unlock(const BlobfsFs* fs, const char* path, BlobfsError* err);

// ---- files ----

// Opens `path` (mode: BLOBFS_OPEN_*); *out gets the handle, *size the file's size.
int blobfs_file_open(const BlobfsFs* fs, const char* path, int mode, BlobfsFile** out,
                     uint64_t* size, BlobfsError* err);
// Reads up to len bytes at offset into buf; *got is short only at the end of the file.
int blobfs_file_read(const BlobfsFile* f, uint64_t offset, uint8_t* buf, size_t len,
                     size_t* got, BlobfsError* err);
// Writes all len bytes at offset (into the file cache; durable on fsync).
int blobfs_file_write(const BlobfsFile* f, uint64_t offset, const uint8_t* data, size_t len,
                      BlobfsError* err);
// Sets the size (truncate or extend with zeroes).
int blobfs_file_truncate(const BlobfsFile* f, uint64_t size, BlobfsError* err);
// Writes the file's cached data back to the device (no commit: not yet durable).
int blobfs_file_flush(const BlobfsFile* f, BlobfsError* err);
// Makes the file's data and size durable (BlobFS fsync: write back + commit).
int blobfs_file_fsync(const BlobfsFile* f, BlobfsError* err);
// The file's current size.
int blobfs_file_size(const BlobfsFile* f, uint64_t* size, BlobfsError* err);
// The inode number (stable for the file's life, never reused).
uint64_t blobfs_file_ino(const BlobfsFile* f);
// Closes the handle (writes the file's data back) and frees it, also on error.
int blobfs_file_close(BlobfsFile* f, BlobfsError* err);

// ---- exported by the shim, for Rust users of the library ----

// Registers the blobfs:// FileSystem factory with ObjectLibrary::Default() (done by a
// static initializer already; idempotent). Returns 1.
int blobfs_rocksdb_register(void);
// A new rocksdb_env_t (the C API's struct { Env* rep; bool is_default; }) whose file
// system is BlobFS on `uri`, for rocksdb_options_set_env; free it with
// rocksdb_env_destroy. Null on failure, with the message in errbuf (NUL-terminated).
struct rocksdb_env_t* blobfs_rocksdb_env_create(const char* uri, char* errbuf, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif  // BLOBFS_FFI_H
