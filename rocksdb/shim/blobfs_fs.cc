// A rocksdb::FileSystem on BlobFS: every call is forwarded over the C ABI in blobfs_ffi.h
// to the Rust side of this crate, which runs it on blobfs::FileSystem.
//
// A static initializer registers a factory for "blobfs://IMAGE" URIs with
// ObjectLibrary::Default(), so with this library preloaded (LD_PRELOAD) the stock tools
// take `--fs_uri=blobfs:///path/to/image`: db_bench, ldb, sst_dump.
//
// RocksDB is not exception-safe: nothing here throws on purpose (allocation failure
// aside), and all errors come back as IOStatus.

#include "blobfs_ffi.h"

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/io_status.h>
#include <rocksdb/status.h>
#include <rocksdb/utilities/object_registry.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// The C API's environment struct (db/c.cc, not in any header), repeated token for token
// so blobfs_rocksdb_env_create can hand out one that rocksdb_env_destroy frees.
extern "C" struct rocksdb_env_t {
  ROCKSDB_NAMESPACE::Env* rep;
  bool is_default;
};

namespace blobfs_rocksdb {
namespace {

using ROCKSDB_NAMESPACE::Env;
using ROCKSDB_NAMESPACE::FileLock;
using ROCKSDB_NAMESPACE::FileOptions;
using ROCKSDB_NAMESPACE::FileSystem;
using ROCKSDB_NAMESPACE::FSDirectory;
using ROCKSDB_NAMESPACE::FSRandomAccessFile;
using ROCKSDB_NAMESPACE::FSRandomRWFile;
using ROCKSDB_NAMESPACE::FSSequentialFile;
using ROCKSDB_NAMESPACE::FSWritableFile;
using ROCKSDB_NAMESPACE::IODebugContext;
using ROCKSDB_NAMESPACE::IOOptions;
using ROCKSDB_NAMESPACE::IOStatus;
using ROCKSDB_NAMESPACE::Logger;
using ROCKSDB_NAMESPACE::ObjectLibrary;
using ROCKSDB_NAMESPACE::Slice;
using ROCKSDB_NAMESPACE::Status;

// The status RocksDB expects for an errno: NotFound (with the PathNotFound subcode, so
// both IsNotFound() and IsPathNotFound() hold, as RocksDB's own checks use either) for
// ENOENT, NoSpace for ENOSPC, IOError otherwise; the message names the path.
IOStatus ToStatus(int code, const BlobfsError& err) {
  if (code == 0) {
    return IOStatus::OK();
  }
  std::string msg = err.msg[0] != '\0' ? std::string(err.msg) : std::string(strerror(code));
  switch (code) {
    case ENOENT:
      return ROCKSDB_NAMESPACE::status_to_io_status(
          Status::NotFound(Status::kPathNotFound, msg));
    case ENOSPC:
      return IOStatus::NoSpace(msg);
    default:
      return IOStatus::IOError(msg);
  }
}

// Runs one ABI call with a fresh error record; returns its status on failure.
#define BLOBFS_TRY(call_with_err)              \
  do {                                         \
    BlobfsError err_{};                        \
    int rc_ = (call_with_err);                 \
    if (rc_ != 0) return ToStatus(rc_, err_);  \
  } while (0)

IOStatus Closed(const std::string& path) {
  return IOStatus::IOError("blobfs: file already closed: " + path);
}

// ---- files ----

class BlobfsSequentialFile : public FSSequentialFile {
 public:
  BlobfsSequentialFile(BlobfsFile* f, std::string path) : f_(f), path_(std::move(path)) {}
  ~BlobfsSequentialFile() override { blobfs_file_close(f_, nullptr); }

  IOStatus Read(size_t n, const IOOptions&, Slice* result, char* scratch,
                IODebugContext*) override {
    size_t got = 0;
    BLOBFS_TRY(blobfs_file_read(f_, pos_, reinterpret_cast<uint8_t*>(scratch), n, &got, &err_));
    pos_ += got;
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions&, Slice* result,
                          char* scratch, IODebugContext*) override {
    size_t got = 0;
    BLOBFS_TRY(
        blobfs_file_read(f_, offset, reinterpret_cast<uint8_t*>(scratch), n, &got, &err_));
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  IOStatus Skip(uint64_t n) override {
    pos_ += n;
    return IOStatus::OK();
  }

  IOStatus InvalidateCache(size_t, size_t) override { return IOStatus::OK(); }

 private:
  BlobfsFile* f_;
  std::string path_;
  uint64_t pos_ = 0;
};

class BlobfsRandomAccessFile : public FSRandomAccessFile {
 public:
  BlobfsRandomAccessFile(BlobfsFile* f, std::string path) : f_(f), path_(std::move(path)) {}
  ~BlobfsRandomAccessFile() override { blobfs_file_close(f_, nullptr); }

  // Const and thread-safe: the Rust side reads at an offset without shared state.
  IOStatus Read(uint64_t offset, size_t n, const IOOptions&, Slice* result, char* scratch,
                IODebugContext*) const override {
    size_t got = 0;
    BLOBFS_TRY(
        blobfs_file_read(f_, offset, reinterpret_cast<uint8_t*>(scratch), n, &got, &err_));
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  // A hint we do not act on. NotSupported (not OK) tells RocksDB to read ahead into its
  // own per-iterator buffer (FilePrefetchBuffer) instead of assuming the file system
  // now holds the range: BlobFS keeps one read-ahead window per file, shared by all
  // readers, and caches no clean pages.
  IOStatus Prefetch(uint64_t, size_t, const IOOptions&, IODebugContext*) override {
    return IOStatus::NotSupported("blobfs: Prefetch");
  }

  size_t GetUniqueId(char* id, size_t max_size) const override {
    // The inode number never repeats in an image (blob ids only move forward), but two
    // images can share numbers: leave unique ids to RocksDB's table properties.
    (void)id;
    (void)max_size;
    return 0;
  }

  IOStatus InvalidateCache(size_t, size_t) override { return IOStatus::OK(); }

 private:
  BlobfsFile* f_;
  std::string path_;
};

class BlobfsWritableFile : public FSWritableFile {
 public:
  BlobfsWritableFile(BlobfsFile* f, std::string path, uint64_t size,
                     const FileOptions& options)
      : FSWritableFile(options), f_(f), path_(std::move(path)), size_(size) {}
  ~BlobfsWritableFile() override {
    if (f_ != nullptr) {
      blobfs_file_close(f_, nullptr);
    }
  }

  IOStatus Append(const Slice& data, const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    uint64_t at = size_.load();
    BLOBFS_TRY(blobfs_file_write(f_, at, reinterpret_cast<const uint8_t*>(data.data()),
                                 data.size(), &err_));
    size_.store(at + data.size());
    return IOStatus::OK();
  }

  IOStatus Append(const Slice& data, const IOOptions& options,
                  const ROCKSDB_NAMESPACE::DataVerificationInfo&,
                  IODebugContext* dbg) override {
    return Append(data, options, dbg);
  }

  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions&,
                            IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    BLOBFS_TRY(blobfs_file_write(f_, offset, reinterpret_cast<const uint8_t*>(data.data()),
                                 data.size(), &err_));
    uint64_t end = offset + data.size();
    uint64_t cur = size_.load();
    while (cur < end && !size_.compare_exchange_weak(cur, end)) {
    }
    return IOStatus::OK();
  }

  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            const ROCKSDB_NAMESPACE::DataVerificationInfo&,
                            IODebugContext* dbg) override {
    return PositionedAppend(data, offset, options, dbg);
  }

  IOStatus Truncate(uint64_t size, const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    BLOBFS_TRY(blobfs_file_truncate(f_, size, &err_));
    size_.store(size);
    return IOStatus::OK();
  }

  IOStatus Close(const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return IOStatus::OK();
    BlobfsFile* f = f_;
    f_ = nullptr;
    BLOBFS_TRY(blobfs_file_close(f, &err_));
    return IOStatus::OK();
  }

  // The data is in BlobFS's cache already, visible to every reader in the process; it
  // becomes durable on Sync/Fsync (a commit), or with the background sync.
  IOStatus Flush(const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    return IOStatus::OK();
  }

  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    return Fsync(options, dbg);
  }

  IOStatus Fsync(const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    BLOBFS_TRY(blobfs_file_fsync(f_, &err_));
    return IOStatus::OK();
  }

  // blobfs fsync may run while another thread appends.
  bool IsSyncThreadSafe() const override { return true; }

  uint64_t GetFileSize(const IOOptions&, IODebugContext*) override { return size_.load(); }

  IOStatus InvalidateCache(size_t, size_t) override { return IOStatus::OK(); }

 private:
  BlobfsFile* f_;
  std::string path_;
  std::atomic<uint64_t> size_;
};

class BlobfsRandomRWFile : public FSRandomRWFile {
 public:
  BlobfsRandomRWFile(BlobfsFile* f, std::string path) : f_(f), path_(std::move(path)) {}
  ~BlobfsRandomRWFile() override {
    if (f_ != nullptr) {
      blobfs_file_close(f_, nullptr);
    }
  }

  IOStatus Write(uint64_t offset, const Slice& data, const IOOptions&,
                 IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    BLOBFS_TRY(blobfs_file_write(f_, offset, reinterpret_cast<const uint8_t*>(data.data()),
                                 data.size(), &err_));
    return IOStatus::OK();
  }

  IOStatus Read(uint64_t offset, size_t n, const IOOptions&, Slice* result, char* scratch,
                IODebugContext*) const override {
    if (f_ == nullptr) return Closed(path_);
    size_t got = 0;
    BLOBFS_TRY(
        blobfs_file_read(f_, offset, reinterpret_cast<uint8_t*>(scratch), n, &got, &err_));
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  IOStatus Flush(const IOOptions&, IODebugContext*) override { return IOStatus::OK(); }

  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    return Fsync(options, dbg);
  }

  IOStatus Fsync(const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return Closed(path_);
    BLOBFS_TRY(blobfs_file_fsync(f_, &err_));
    return IOStatus::OK();
  }

  IOStatus Close(const IOOptions&, IODebugContext*) override {
    if (f_ == nullptr) return IOStatus::OK();
    BlobfsFile* f = f_;
    f_ = nullptr;
    BLOBFS_TRY(blobfs_file_close(f, &err_));
    return IOStatus::OK();
  }

 private:
  BlobfsFile* f_;
  std::string path_;
};

class BlobfsDirectory : public FSDirectory {
 public:
  BlobfsDirectory(std::shared_ptr<BlobfsFs> fs, std::string path)
      : fs_(std::move(fs)), path_(std::move(path)) {}

  // One commit makes every namespace change (and every fsynced file) durable.
  IOStatus Fsync(const IOOptions&, IODebugContext*) override {
    BLOBFS_TRY(blobfs_sync_dir(fs_.get(), path_.c_str(), &err_));
    return IOStatus::OK();
  }

  IOStatus Close(const IOOptions&, IODebugContext*) override { return IOStatus::OK(); }

 private:
  std::shared_ptr<BlobfsFs> fs_;
  std::string path_;
};

// The LOG file: lines as RocksDB's own loggers write them
// ("2024/01/02-03:04:05.123456 7f0123456789 message").
class BlobfsLogger : public Logger {
 public:
  BlobfsLogger(BlobfsFile* f, std::string path, uint64_t size,
               ROCKSDB_NAMESPACE::InfoLogLevel level)
      : Logger(level), f_(f), path_(std::move(path)), size_(size) {}
  ~BlobfsLogger() override {
    if (!closed_) {
      closed_ = true;
      CloseFile();
    }
  }

  using Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    struct timeval now;
    gettimeofday(&now, nullptr);
    struct tm t;
    time_t seconds = now.tv_sec;
    localtime_r(&seconds, &t);
    char head[128];
    int hn = snprintf(head, sizeof(head), "%04d/%02d/%02d-%02d:%02d:%02d.%06d %llx ",
                      t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min,
                      t.tm_sec, static_cast<int>(now.tv_usec),
                      static_cast<unsigned long long>(pthread_self()));
    if (hn < 0) return;
    std::string line(head, static_cast<size_t>(hn) < sizeof(head) ? hn : sizeof(head) - 1);
    va_list copy;
    va_copy(copy, ap);
    char body[512];
    int n = vsnprintf(body, sizeof(body), format, copy);
    va_end(copy);
    if (n < 0) return;
    if (static_cast<size_t>(n) < sizeof(body)) {
      line.append(body, n);
    } else {
      std::vector<char> big(static_cast<size_t>(n) + 1);
      va_copy(copy, ap);
      vsnprintf(big.data(), big.size(), format, copy);
      va_end(copy);
      line.append(big.data(), n);
    }
    if (line.empty() || line.back() != '\n') line.push_back('\n');
    std::lock_guard<std::mutex> g(mu_);
    if (f_ == nullptr) return;
    if (blobfs_file_write(f_, size_, reinterpret_cast<const uint8_t*>(line.data()),
                          line.size(), nullptr) == 0) {
      size_ += line.size();
    }
  }

  size_t GetLogFileSize() const override {
    std::lock_guard<std::mutex> g(mu_);
    return size_;
  }

  // The syncer writes the log back every few seconds; a commit per flush would be costly.
  void Flush() override {}

 protected:
  Status CloseImpl() override { return CloseFile(); }

 private:
  Status CloseFile() {
    std::lock_guard<std::mutex> g(mu_);
    if (f_ == nullptr) return Status::OK();
    BlobfsError err{};
    int rc = blobfs_file_close(f_, &err);
    f_ = nullptr;
    if (rc != 0) return Status::IOError(err.msg);
    return Status::OK();
  }

  mutable std::mutex mu_;
  BlobfsFile* f_;
  std::string path_;
  uint64_t size_;
};

class BlobfsFileLock : public FileLock {
 public:
  explicit BlobfsFileLock(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- the file system ----

class BlobfsFileSystem : public FileSystem {
 public:
  BlobfsFileSystem(BlobfsFs* fs, std::string uri)
      : fs_(fs, [](BlobfsFs* p) { blobfs_fs_close(p); }), uri_(std::move(uri)) {}

  static const char* kClassName() { return "BlobfsFileSystem"; }
  const char* Name() const override { return kClassName(); }

  std::string Image() const {
    char buf[4096];
    blobfs_fs_image(fs_.get(), buf, sizeof(buf));
    return buf;
  }

  IOStatus NewSequentialFile(const std::string& fname, const FileOptions&,
                             std::unique_ptr<FSSequentialFile>* result,
                             IODebugContext*) override {
    BlobfsFile* f = nullptr;
    uint64_t size = 0;
    BLOBFS_TRY(blobfs_file_open(fs_.get(), fname.c_str(), BLOBFS_OPEN_READ, &f, &size, &err_));
    result->reset(new BlobfsSequentialFile(f, fname));
    return IOStatus::OK();
  }

  IOStatus NewRandomAccessFile(const std::string& fname, const FileOptions&,
                               std::unique_ptr<FSRandomAccessFile>* result,
                               IODebugContext*) override {
    BlobfsFile* f = nullptr;
    uint64_t size = 0;
    BLOBFS_TRY(blobfs_file_open(fs_.get(), fname.c_str(), BLOBFS_OPEN_READ, &f, &size, &err_));
    result->reset(new BlobfsRandomAccessFile(f, fname));
    return IOStatus::OK();
  }

  IOStatus NewWritableFile(const std::string& fname, const FileOptions& options,
                           std::unique_ptr<FSWritableFile>* result,
                           IODebugContext*) override {
    BlobfsFile* f = nullptr;
    uint64_t size = 0;
    BLOBFS_TRY(
        blobfs_file_open(fs_.get(), fname.c_str(), BLOBFS_OPEN_TRUNCATE, &f, &size, &err_));
    result->reset(new BlobfsWritableFile(f, fname, size, options));
    return IOStatus::OK();
  }

  IOStatus ReopenWritableFile(const std::string& fname, const FileOptions& options,
                              std::unique_ptr<FSWritableFile>* result,
                              IODebugContext*) override {
    BlobfsFile* f = nullptr;
    uint64_t size = 0;
    BLOBFS_TRY(
        blobfs_file_open(fs_.get(), fname.c_str(), BLOBFS_OPEN_APPEND, &f, &size, &err_));
    result->reset(new BlobfsWritableFile(f, fname, size, options));
    return IOStatus::OK();
  }

  IOStatus NewRandomRWFile(const std::string& fname, const FileOptions&,
                           std::unique_ptr<FSRandomRWFile>* result,
                           IODebugContext*) override {
    BlobfsFile* f = nullptr;
    uint64_t size = 0;
    BLOBFS_TRY(
        blobfs_file_open(fs_.get(), fname.c_str(), BLOBFS_OPEN_APPEND, &f, &size, &err_));
    result->reset(new BlobfsRandomRWFile(f, fname));
    return IOStatus::OK();
  }

  IOStatus NewDirectory(const std::string& name, const IOOptions&,
                        std::unique_ptr<FSDirectory>* result, IODebugContext*) override {
    BlobfsStat st{};
    BLOBFS_TRY(blobfs_stat(fs_.get(), name.c_str(), &st, &err_));
    if (st.kind != BLOBFS_KIND_DIR) {
      return IOStatus::IOError("blobfs: not a directory: " + name);
    }
    result->reset(new BlobfsDirectory(fs_, name));
    return IOStatus::OK();
  }

  IOStatus FileExists(const std::string& fname, const IOOptions&, IODebugContext*) override {
    BlobfsStat st{};
    BlobfsError err{};
    int rc = blobfs_stat(fs_.get(), fname.c_str(), &st, &err);
    if (rc == ENOENT || rc == ENOTDIR) return IOStatus::NotFound(err.msg);
    return ToStatus(rc, err);
  }

  IOStatus GetChildren(const std::string& dir, const IOOptions&,
                       std::vector<std::string>* result, IODebugContext*) override {
    result->clear();
    BLOBFS_TRY(blobfs_children(
        fs_.get(), dir.c_str(),
        [](void* ctx, const char* name, size_t len) {
          static_cast<std::vector<std::string>*>(ctx)->emplace_back(name, len);
        },
        result, &err_));
    return IOStatus::OK();
  }

  IOStatus DeleteFile(const std::string& fname, const IOOptions&, IODebugContext*) override {
    BLOBFS_TRY(blobfs_unlink(fs_.get(), fname.c_str(), &err_));
    return IOStatus::OK();
  }

  IOStatus CreateDir(const std::string& dirname, const IOOptions&, IODebugContext*) override {
    BLOBFS_TRY(blobfs_mkdir(fs_.get(), dirname.c_str(), 0, &err_));
    return IOStatus::OK();
  }

  IOStatus CreateDirIfMissing(const std::string& dirname, const IOOptions&,
                              IODebugContext*) override {
    BLOBFS_TRY(blobfs_mkdir(fs_.get(), dirname.c_str(), 1, &err_));
    return IOStatus::OK();
  }

  IOStatus DeleteDir(const std::string& dirname, const IOOptions&, IODebugContext*) override {
    BLOBFS_TRY(blobfs_rmdir(fs_.get(), dirname.c_str(), &err_));
    return IOStatus::OK();
  }

  IOStatus GetFileSize(const std::string& fname, const IOOptions&, uint64_t* file_size,
                       IODebugContext*) override {
    BlobfsStat st{};
    BLOBFS_TRY(blobfs_stat(fs_.get(), fname.c_str(), &st, &err_));
    *file_size = st.size;
    return IOStatus::OK();
  }

  IOStatus GetFileModificationTime(const std::string& fname, const IOOptions&,
                                   uint64_t* file_mtime, IODebugContext*) override {
    BlobfsStat st{};
    BLOBFS_TRY(blobfs_stat(fs_.get(), fname.c_str(), &st, &err_));
    *file_mtime = st.mtime_sec < 0 ? 0 : static_cast<uint64_t>(st.mtime_sec);
    return IOStatus::OK();
  }

  IOStatus RenameFile(const std::string& src, const std::string& target, const IOOptions&,
                      IODebugContext*) override {
    BLOBFS_TRY(blobfs_rename(fs_.get(), src.c_str(), target.c_str(), &err_));
    return IOStatus::OK();
  }

  IOStatus LinkFile(const std::string&, const std::string&, const IOOptions&,
                    IODebugContext*) override {
    return IOStatus::NotSupported("blobfs: LinkFile is not supported");
  }

  IOStatus LockFile(const std::string& fname, const IOOptions&, FileLock** lock,
                    IODebugContext*) override {
    *lock = nullptr;
    BLOBFS_TRY(blobfs_lock(fs_.get(), fname.c_str(), &err_));
    *lock = new BlobfsFileLock(fname);
    return IOStatus::OK();
  }

  IOStatus UnlockFile(FileLock* lock, const IOOptions&, IODebugContext*) override {
    auto* l = static_cast<BlobfsFileLock*>(lock);
    BlobfsError err{};
    int rc = blobfs_unlock(fs_.get(), l->path().c_str(), &err);
    delete l;
    return ToStatus(rc, err);
  }

  IOStatus GetTestDirectory(const IOOptions&, std::string* path, IODebugContext*) override {
    *path = "/rocksdbtest";
    BLOBFS_TRY(blobfs_mkdir(fs_.get(), path->c_str(), 1, &err_));
    return IOStatus::OK();
  }

  IOStatus NewLogger(const std::string& fname, const IOOptions&,
                     std::shared_ptr<Logger>* result, IODebugContext*) override {
    BlobfsFile* f = nullptr;
    uint64_t size = 0;
    BLOBFS_TRY(
        blobfs_file_open(fs_.get(), fname.c_str(), BLOBFS_OPEN_TRUNCATE, &f, &size, &err_));
    result->reset(new BlobfsLogger(f, fname, size, ROCKSDB_NAMESPACE::InfoLogLevel::INFO_LEVEL));
    return IOStatus::OK();
  }

  // Paths are absolute from the BlobFS root; a relative one is taken from the root.
  IOStatus GetAbsolutePath(const std::string& db_path, const IOOptions&,
                           std::string* output_path, IODebugContext*) override {
    if (!db_path.empty() && db_path[0] == '/') {
      *output_path = db_path;
    } else {
      *output_path = "/" + db_path;
    }
    return IOStatus::OK();
  }

  IOStatus IsDirectory(const std::string& path, const IOOptions&, bool* is_dir,
                       IODebugContext*) override {
    BlobfsStat st{};
    BLOBFS_TRY(blobfs_stat(fs_.get(), path.c_str(), &st, &err_));
    if (is_dir != nullptr) *is_dir = st.kind == BLOBFS_KIND_DIR;
    return IOStatus::OK();
  }

  IOStatus GetFreeSpace(const std::string&, const IOOptions&, uint64_t* diskfree,
                        IODebugContext*) override {
    BLOBFS_TRY(blobfs_fs_free_space(fs_.get(), diskfree, &err_));
    return IOStatus::OK();
  }

 private:
  std::shared_ptr<BlobfsFs> fs_;
  std::string uri_;
};

// The factory: opens the image named by the URI. RocksDB reports errmsg (as
// InvalidArgument) when it gets nullptr back.
FileSystem* NewBlobfsFileSystem(const std::string& uri, std::unique_ptr<FileSystem>* guard,
                                std::string* errmsg) {
  BlobfsError err{};
  BlobfsFs* fs = blobfs_fs_open(uri.c_str(), &err);
  if (fs == nullptr) {
    // The tools print this (db_bench: "Failed creating env: Invalid argument: ...") and
    // exit 1.
    if (errmsg != nullptr) *errmsg = std::string("blobfs: ") + err.msg;
    return nullptr;
  }
  auto* bfs = new BlobfsFileSystem(fs, uri);
  guard->reset(bfs);
  fprintf(stderr, "blobfs: RocksDB FileSystem on %s (%s)\n", bfs->Image().c_str(), uri.c_str());
  return bfs;
}

std::once_flag registered;

void RegisterOnce() {
  std::call_once(registered, [] {
    ObjectLibrary::Default()->AddFactory<FileSystem>(
        ObjectLibrary::PatternEntry("blobfs", true).AddSeparator("://", false),
        NewBlobfsFileSystem);
  });
}

// Registers the factory when the library is loaded (LD_PRELOAD, or linked into a program).
struct Registrar {
  Registrar() { RegisterOnce(); }
};
Registrar registrar;

}  // namespace
}  // namespace blobfs_rocksdb

extern "C" int blobfs_rocksdb_register(void) {
  blobfs_rocksdb::RegisterOnce();
  return 1;
}

extern "C" rocksdb_env_t* blobfs_rocksdb_env_create(const char* uri, char* errbuf,
                                                    size_t errlen) {
  auto fail = [&](const std::string& msg) -> rocksdb_env_t* {
    if (errbuf != nullptr && errlen > 0) snprintf(errbuf, errlen, "%s", msg.c_str());
    return nullptr;
  };
  if (uri == nullptr) return fail("blobfs: no URI");
  BlobfsError e{};
  BlobfsFs* fs = blobfs_fs_open(uri, &e);
  if (fs == nullptr) return fail(std::string("blobfs: ") + e.msg);
  std::shared_ptr<ROCKSDB_NAMESPACE::FileSystem> shared(
      new blobfs_rocksdb::BlobfsFileSystem(fs, uri));
  std::unique_ptr<ROCKSDB_NAMESPACE::Env> env = ROCKSDB_NAMESPACE::NewCompositeEnv(shared);
  if (!env) return fail("blobfs: NewCompositeEnv failed");
  return new rocksdb_env_t{env.release(), false};
}
