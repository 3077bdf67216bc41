// Resize a folder of JPEG/PNG images to 300x300 with a Pool and libvips
// (Debian's libvips-dev), and compare with CPython + Pillow doing the same.
//
//   resize_images SRC OUT    resize every .jpg/.jpeg/.png of SRC into OUT
//   resize_images            demo: generate sample photos, resize them in one
//                            process and with Pool.map, then (if python3 has
//                            Pillow) time examples/resize_images.py on them
//   resize_images --check    the demo on 4 photos, without Python (a test)
//
// vips_thumbnail() is libvips' shrink-on-load path: a JPEG is decoded by
// libjpeg-turbo at 1/2, 1/4 or 1/8 scale (DCT scaling) and only the rest is
// resampled (lanczos3), so a 1600x1200 JPEG never exists in memory at full
// size. PNG has no such shortcut; it is decoded whole, then shrunk. The Python
// script gives Pillow the same advantages (Image.draft, reducing_gap).
//
// Fair play: each libvips call runs on one thread (vips_concurrency_set(1)),
// as each Pillow call does, so the parallelism measured is the Pool's.
#include <unistd.h>
#include <vips/vips.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace fs = std::filesystem;

namespace {

constexpr int kSide = 300;

std::string lower_extension(const fs::path& p) {
  auto ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

bool is_jpeg(const fs::path& p) {
  const auto ext = lower_extension(p);
  return ext == ".jpg" || ext == ".jpeg";
}

// libvips' last error as an exception (and the error buffer cleared).
[[noreturn]] void throw_vips(const std::string& what) {
  std::string text = what + ": " + vips_error_buffer();
  vips_error_clear();
  while (!text.empty() && text.back() == '\n') text.pop_back();
  throw std::runtime_error(text);
}

// Before mproc::init (see main).
void start_vips(const char* argv0) {
  if (VIPS_INIT(argv0) != 0) throw_vips("vips_init");
  vips_concurrency_set(1);  // one thread per image, as Pillow (see the top)
  vips_cache_set_max(0);    // every image is read once: nothing to cache
}

// Frees a VipsImage when it goes out of scope.
struct ImageRef {
  VipsImage* image = nullptr;
  ImageRef() = default;
  ImageRef(const ImageRef&) = delete;
  ImageRef& operator=(const ImageRef&) = delete;
  ~ImageRef() {
    if (image) g_object_unref(image);
  }
};

// Runs in a worker: one image in, its 300x300 copy out (same format,
// JPEG at quality 90). Returns the output's path.
std::string resize_one(std::pair<std::string, std::string> job) {
  const auto& [src, dst] = job;
  ImageRef out;
  if (vips_thumbnail(src.c_str(), &out.image, kSide, "height", kSide, "size", VIPS_SIZE_FORCE, nullptr) != 0)
    throw_vips(src);
  const std::string target = is_jpeg(dst) ? dst + "[Q=90]" : dst;
  if (vips_image_write_to_file(out.image, target.c_str(), nullptr) != 0) throw_vips(dst);
  return dst;
}

std::vector<std::pair<std::string, std::string>> jobs_for(const fs::path& src, const fs::path& out) {
  std::vector<std::pair<std::string, std::string>> jobs;
  for (const auto& e : fs::directory_iterator(src)) {
    if (e.is_regular_file() && (lower_extension(e.path()) == ".png" || is_jpeg(e.path())))
      jobs.emplace_back(e.path().string(), (out / e.path().filename()).string());
  }
  std::sort(jobs.begin(), jobs.end());
  return jobs;
}

// Sample "photos": smooth gradients with rings and noise, so the encoders
// and the filter do real work.
void make_samples(const fs::path& dir, int count) {
  std::vector<unsigned char> px;
  unsigned seed = 1;
  for (int i = 0; i < count; ++i) {
    const int w = 1600 + 64 * (i % 5), h = 1200 + 48 * (i % 3);
    px.resize(static_cast<std::size_t>(w) * h * 3);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        seed = seed * 1103515245u + 12345u;
        const double r = std::hypot(x - w / 2.0, y - h / 2.0);
        unsigned char* p = &px[(static_cast<std::size_t>(y) * w + x) * 3];
        p[0] = static_cast<unsigned char>(255.0 * x / w);
        p[1] = static_cast<unsigned char>(127.5 + 127.5 * std::sin(r / (6.0 + i)));
        p[2] = static_cast<unsigned char>((255 * y / h + (seed >> 27)) & 0xff);
      }
    const std::string name =
        (dir / ("photo_" + std::to_string(i) + (i % 2 ? ".png" : ".jpg"))).string() + (i % 2 ? "" : "[Q=90]");
    ImageRef img;
    img.image = vips_image_new_from_memory(px.data(), px.size(), w, h, 3, VIPS_FORMAT_UCHAR);
    if (!img.image || vips_image_write_to_file(img.image, name.c_str(), nullptr) != 0) throw_vips(name);
  }
}

// Width and height from the file's header (libvips reads no pixels here).
std::pair<int, int> size_of(const fs::path& file) {
  ImageRef img;
  img.image = vips_image_new_from_file(file.c_str(), nullptr);
  if (!img.image) throw_vips(file.string());
  return {vips_image_get_width(img.image), vips_image_get_height(img.image)};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The CPython + Pillow script beside this program's source, if Pillow is
// there: its own timing line, or "" when it cannot run.
std::string run_python(const fs::path& src, const fs::path& out, unsigned workers) {
  const fs::path script = fs::path(MPROC_EXAMPLES_DIR) / "resize_images.py";
  // Debian's interpreter, where python3-pil installs Pillow.
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  if (!fs::exists(script) || std::system((python + " -c 'import PIL' >/dev/null 2>&1").c_str()) != 0) return "";
  const std::string cmd = python + " '" + script.string() + "' '" + src.string() + "' '" + out.string() + "' " +
                          std::to_string(workers);
  std::string text;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) text += buf;
    if (::pclose(p) != 0) return "";
  }
  return text;
}

int demo(int count, bool with_python) {
  char tmpl[] = "/tmp/mproc-images-XXXXXX";
  if (!::mkdtemp(tmpl)) return 1;
  const fs::path root = tmpl, src = root / "photos", out1 = root / "one", outn = root / "pool", outpy = root / "py";
  for (const auto& d : {src, out1, outn, outpy}) fs::create_directories(d);
  make_samples(src, count);
  std::printf("%d sample photos (JPEG and PNG, about 1600x1200) -> 300x300, libvips shrink-on-load\n", count);

  auto t0 = std::chrono::steady_clock::now();
  for (auto& job : jobs_for(src, out1)) resize_one(job);
  const double one = seconds_since(t0);
  // The pool's start-up is timed, as the Python script times its Pool's.
  t0 = std::chrono::steady_clock::now();
  mproc::Pool pool;
  const auto outputs = pool.map(resize_one, jobs_for(src, outn), 1);
  const double many = seconds_since(t0);
  const unsigned workers = pool.processes();
  std::printf("  C++ + mproc + libvips: one process %.3f s   Pool(%u).map %.3f s   speed-up %.2fx\n", one, workers,
              many, one / many);
  int good = 0;
  for (const auto& e : fs::directory_iterator(outn))
    if (size_of(e.path()) == std::pair{kSide, kSide}) ++good;
  std::printf("  %d of %zu outputs are 300x300\n", good, outputs.size());
  const std::string py = with_python ? run_python(src, outpy, workers) : "";
  if (!with_python) std::printf("  CPython + Pillow: not run (--check)\n");
  else if (py.empty()) std::printf("  CPython + Pillow: not run (python3 without Pillow; apt-get install python3-pil)\n");
  else std::printf("  CPython + Pillow:      %s", py.c_str());
  fs::remove_all(root);
  return good == count && static_cast<int>(outputs.size()) == count ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // libvips first, then mproc: vips_init() (about 0.13 s of CPU: it loads
  // libvips' modules) starts no thread, and mproc::init forks the fork server
  // from this still single-threaded process, so every worker, forked from that
  // server, starts with libvips ready, as CPython's forked workers start with
  // PIL imported. (libvips makes threads once it works on an image: it must
  // not be in use when a plain fork happens, hence forkserver, the default,
  // named here because it matters.)
  try {
    start_vips(argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resize_images: %s\n", e.what());
    return 1;
  }
  mproc::init(argc, argv, {.start_method = mproc::StartMethod::forkserver});
  try {
    if (argc == 2 && std::string(argv[1]) == "--check") return demo(4, false);
    if (argc < 3) return demo(16, true);
    fs::create_directories(argv[2]);
    const auto jobs = jobs_for(argv[1], argv[2]);
    const auto t0 = std::chrono::steady_clock::now();
    mproc::Pool pool;
    pool.map(resize_one, jobs, 1);
    std::printf("%zu images resized to %dx%d in %.3f s with Pool(%u)\n", jobs.size(), kSide, kSide, seconds_since(t0),
                pool.processes());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resize_images: %s\n", e.what());
    return 1;
  }
  return 0;
}
