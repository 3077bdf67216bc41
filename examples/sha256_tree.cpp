// SHA-256 of every file in a directory tree with a Pool, printed exactly as
// `sha256sum` prints it (same order as `find DIR -type f | LC_ALL=C sort`).
//
//   sha256_tree DIR      hash DIR's files, one "HASH  PATH" line each
//   sha256_tree          demo: make a sample tree, hash it sequentially and
//                        with Pool.imap, and check against sha256sum itself;
//                        then the in-memory case below
//   sha256_tree --buffers  hash buffers already in memory (16 x 4 MiB), sent
//                        to the pool as std::vector and as mproc::SharedBytes
//
// Files travel to the workers as paths (each worker reads its own). Data
// already in the parent's memory (downloaded, decoded, generated) is where
// mproc::SharedBytes helps: a std::vector argument is copied into the
// worker's arena, a SharedBytes crosses as a handle and the worker hashes
// the parent's own pages. With SHA-256 (a few hundred MB/s per core) the
// hashing dominates, so the two take about the same time here; what the
// handle saves is the copy and the memory it takes. A cheaper task over the
// same bytes (a checksum, a lookup) is where the copy shows in the time
// (bench/bench_bulk.cpp: SharedBytes echo 114x CPython, docs/benchmarks.md).
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace fs = std::filesystem;

namespace {

std::string hex_of(const unsigned char* md, unsigned len) {
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    char two[3];
    std::snprintf(two, sizeof two, "%02x", md[i]);
    hex += two;
  }
  return hex;
}

std::string sha256_of(const void* data, std::size_t size) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, size, md, &len, EVP_sha256(), nullptr);
  return hex_of(md, len);
}

// Run in a worker: the digest of a buffer, sent as a copy or as a handle.
std::string sha256_vector(const std::vector<char>& v) { return sha256_of(v.data(), v.size()); }
std::string sha256_shared(const mproc::SharedBytes& b) { return sha256_of(b.bytes().data(), b.size()); }

// Runs in a worker: the file's digest as 64 hex digits. Reads in 1 MiB
// pieces, so a file larger than memory hashes in constant space.
std::string sha256_file(std::string path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx, buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  const bool failed = in.bad();
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  if (failed) throw std::runtime_error(path + ": read error");
  return hex_of(md, len);
}

// sha256sum's line: a name holding '\\', '\n' or '\r' is escaped and the
// line starts with a backslash (coreutils 9).
std::string sha256sum_line(const std::string& hash, const std::string& path) {
  std::string name;
  bool escaped = false;
  for (char c : path) {
    if (c == '\\') name += "\\\\", escaped = true;
    else if (c == '\n') name += "\\n", escaped = true;
    else if (c == '\r') name += "\\r", escaped = true;
    else name += c;
  }
  return (escaped ? "\\" : "") + hash + "  " + name + "\n";
}

std::vector<std::string> files_under(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && !e.is_symlink()) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());  // byte order, as LC_ALL=C sort
  return out;
}

std::string hash_tree(mproc::Pool& pool, const std::vector<std::string>& files) {
  std::string out;
  std::size_t i = 0;
  for (const std::string& hash : pool.imap(sha256_file, files, 4)) out += sha256sum_line(hash, files[i++]);
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A sample tree: nested folders, empty files, small ones and a few of
// several MiB (bigger than one read), names with spaces.
void make_sample_tree(const fs::path& root) {
  std::mt19937_64 rng(2026);
  std::vector<char> data;
  for (int d = 0; d < 8; ++d) {
    fs::path dir = root / ("dir " + std::to_string(d)) / ("sub" + std::to_string(d % 3));
    fs::create_directories(dir);
    for (int f = 0; f < 25; ++f) {
      std::size_t size = f % 10 == 0 ? 0 : (f % 7 == 0 ? (3u << 20) + rng() % 4096 : rng() % 200'000);
      data.resize(size);
      for (auto& c : data) c = static_cast<char>(rng());
      std::ofstream(dir / ("file " + std::to_string(f) + ".bin"), std::ios::binary).write(data.data(),
                                                                                        static_cast<std::streamsize>(size));
    }
  }
}

std::string run_sha256sum(const std::vector<std::string>& files) {
  std::string cmd = "sha256sum";
  for (const auto& f : files) cmd += " '" + f + "'";  // sample names hold no quote
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  return out;
}

// 16 buffers of 4 MiB, hashed in this process, then by the pool from
// std::vector copies and from SharedBytes handles; all three must agree.
int hash_buffers(mproc::Pool& pool) {
  constexpr std::size_t kCount = 16, kSize = 4u << 20;
  std::vector<std::vector<char>> vectors(kCount);
  std::vector<mproc::SharedBytes> shared;
  std::vector<std::string> expected;
  for (std::size_t i = 0; i < kCount; ++i) {
    auto& v = vectors[i];
    v.resize(kSize);
    std::uint64_t x = 0x9E3779B97F4A7C15ull * (i + 1);
    for (auto& c : v) c = static_cast<char>((x ^= x << 13, x ^= x >> 7, x ^= x << 17));
    // Made once, in shared memory: what a program would fill in place.
    auto b = mproc::SharedBytes::create(kSize);
    std::memcpy(b.writable().data(), v.data(), kSize);
    shared.push_back(std::move(b));
    expected.push_back(sha256_of(v.data(), v.size()));
  }
  auto t0 = std::chrono::steady_clock::now();
  const auto by_copy = pool.map(sha256_vector, vectors, 1);
  const double copy_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  const auto by_handle = pool.map(sha256_shared, shared, 1);
  const double handle_s = seconds_since(t0);
  const bool same = by_copy == expected && by_handle == expected;
  std::printf("%zu in-memory buffers of %zu MiB: Pool.map over std::vector %.3f s, over mproc::SharedBytes %.3f s\n",
              kCount, kSize >> 20, copy_s, handle_s);
  std::printf("  digests equal to this process's own: %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}

int demo(mproc::Pool& pool) {
  char tmpl[] = "/tmp/mproc-sha256-XXXXXX";
  if (!::mkdtemp(tmpl)) return 1;
  const fs::path root = tmpl;
  make_sample_tree(root);
  const auto files = files_under(root);
  std::uintmax_t bytes = 0;
  for (const auto& f : files) bytes += fs::file_size(f);
  std::printf("a sample tree of %zu files, %.1f MiB (empty ones, folders with spaces, 3 MiB files)\n", files.size(),
              static_cast<double>(bytes) / (1 << 20));

  auto t0 = std::chrono::steady_clock::now();
  std::string sequential;
  for (const auto& f : files) sequential += sha256sum_line(sha256_file(f), f);
  const double one = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  const std::string pooled = hash_tree(pool, files);
  const double many = seconds_since(t0);
  const std::string reference = run_sha256sum(files);
  std::printf("  one process %.3f s   Pool(%u).imap %.3f s   speed-up %.2fx\n", one, pool.processes(), many, one / many);
  const bool same = pooled == reference && sequential == reference;
  std::printf("  output byte-identical to sha256sum's: %s\n", same ? "yes" : "NO");
  std::printf("  first line: %s", pooled.substr(0, pooled.find('\n') + 1).c_str());
  fs::remove_all(root);
  const int buffers = hash_buffers(pool);
  return same && buffers == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Pool pool;
  if (argc < 2) return demo(pool);
  if (std::string(argv[1]) == "--buffers") return hash_buffers(pool);
  try {
    const std::string out = hash_tree(pool, files_under(argv[1]));
    std::fwrite(out.data(), 1, out.size(), stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sha256_tree: %s\n", e.what());
    return 1;
  }
  return 0;
}
