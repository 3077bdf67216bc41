// Resize a folder of JPEG/PNG images to 300x300 with a Pool (stb_image from
// Debian's libstb), and compare with CPython + Pillow doing the same.
//
//   resize_images SRC OUT    resize every .jpg/.jpeg/.png of SRC into OUT
//   resize_images            demo: generate sample photos, resize them in one
//                            process and with Pool.map, then (if python3 has
//                            Pillow) time examples/resize_images.py on them
#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace fs = std::filesystem;

namespace {

constexpr int kSide = 300;

bool is_jpeg(const fs::path& p) {
  auto ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg";
}

// Runs in a worker: one image in, its 300x300 copy out (same format).
// Returns the source's size as "WxH".
std::string resize_one(std::pair<std::string, std::string> job) {
  const auto& [src, dst] = job;
  int w = 0, h = 0, channels = 0;
  unsigned char* in = stbi_load(src.c_str(), &w, &h, &channels, 3);
  if (!in) throw std::runtime_error(src + ": " + stbi_failure_reason());
  std::vector<unsigned char> out(kSide * kSide * 3);
  const int ok = stbir_resize_uint8(in, w, h, 0, out.data(), kSide, kSide, 0, 3);
  stbi_image_free(in);
  if (!ok) throw std::runtime_error(src + ": resize failed");
  const int written = is_jpeg(dst) ? stbi_write_jpg(dst.c_str(), kSide, kSide, 3, out.data(), 90)
                                   : stbi_write_png(dst.c_str(), kSide, kSide, 3, out.data(), kSide * 3);
  if (!written) throw std::runtime_error(dst + ": cannot write");
  return std::to_string(w) + "x" + std::to_string(h);
}

std::vector<std::pair<std::string, std::string>> jobs_for(const fs::path& src, const fs::path& out) {
  std::vector<std::pair<std::string, std::string>> jobs;
  for (const auto& e : fs::directory_iterator(src)) {
    auto ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (e.is_regular_file() && (ext == ".png" || is_jpeg(e.path())))
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
    const fs::path name = dir / (i % 2 ? "photo_" + std::to_string(i) + ".png" : "photo_" + std::to_string(i) + ".jpg");
    if (i % 2) stbi_write_png(name.c_str(), w, h, 3, px.data(), w * 3);
    else stbi_write_jpg(name.c_str(), w, h, 3, px.data(), 90);
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The CPython + Pillow script beside this program's source, if Pillow is
// there: its own timing line, or "" when it cannot run.
std::string run_python(const fs::path& src, const fs::path& out) {
  const fs::path script = fs::path(MPROC_EXAMPLES_DIR) / "resize_images.py";
  // Debian's interpreter, where python3-pil installs Pillow.
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  if (!fs::exists(script) || std::system((python + " -c 'import PIL' >/dev/null 2>&1").c_str()) != 0) return "";
  const std::string cmd = python + " '" + script.string() + "' '" + src.string() + "' '" + out.string() + "'";
  std::string text;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) text += buf;
    if (::pclose(p) != 0) return "";
  }
  return text;
}

int demo(mproc::Pool& pool) {
  char tmpl[] = "/tmp/mproc-images-XXXXXX";
  if (!::mkdtemp(tmpl)) return 1;
  const fs::path root = tmpl, src = root / "photos", out1 = root / "one", outn = root / "pool", outpy = root / "py";
  for (const auto& d : {src, out1, outn, outpy}) fs::create_directories(d);
  constexpr int kCount = 16;
  make_samples(src, kCount);
  std::printf("%d sample photos (JPEG and PNG, about 1600x1200) -> 300x300\n", kCount);

  auto t0 = std::chrono::steady_clock::now();
  for (auto& job : jobs_for(src, out1)) resize_one(job);
  const double one = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  const auto sizes = pool.map(resize_one, jobs_for(src, outn), 1);
  const double many = seconds_since(t0);
  std::printf("  mproc:   one process %.3f s   Pool(%u).map %.3f s   speed-up %.2fx\n", one, pool.processes(), many,
              one / many);
  int w = 0, h = 0, c = 0, good = 0;
  for (const auto& e : fs::directory_iterator(outn))
    if (stbi_info(e.path().c_str(), &w, &h, &c) && w == kSide && h == kSide) ++good;
  std::printf("  %d of %zu outputs are 300x300 (first source was %s)\n", good, sizes.size(), sizes.front().c_str());
  const std::string py = run_python(src, outpy);
  if (py.empty()) std::printf("  CPython + Pillow: not run (python3 without Pillow; apt-get install python3-pil)\n");
  else std::printf("  CPython + Pillow: %s", py.c_str());
  fs::remove_all(root);
  return good == kCount && static_cast<int>(sizes.size()) == kCount ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Pool pool;
  if (argc < 3) return demo(pool);
  try {
    fs::create_directories(argv[2]);
    const auto jobs = jobs_for(argv[1], argv[2]);
    const auto t0 = std::chrono::steady_clock::now();
    pool.map(resize_one, jobs, 1);
    std::printf("%zu images resized to %dx%d in %.3f s with Pool(%u)\n", jobs.size(), kSide, kSide, seconds_since(t0),
                pool.processes());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resize_images: %s\n", e.what());
    return 1;
  }
  return 0;
}
