// Pool.map, starmap and imap over twenty "match analyses": each analysis
// simulates a football match many times from the teams' scoring rates
// (a Poisson model) and returns the win / draw / loss odds.
//
//   ./match_analysis [simulations per match]
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

struct Match {  // a user type: cereal's serialize() makes it a task argument
  std::string home, away;
  double home_rate = 0, away_rate = 0;  // goals per match
  long simulations = 0;
  std::uint64_t seed = 0;
  template <class A>
  void serialize(A& ar) {
    ar(home, away, home_rate, away_rate, simulations, seed);
  }
};

struct Analysis {
  std::string fixture;
  double home_win = 0, draw = 0, away_win = 0, mean_goals = 0;
  template <class A>
  void serialize(A& ar) {
    ar(fixture, home_win, draw, away_win, mean_goals);
  }
  bool operator==(const Analysis&) const = default;
};

// xorshift64*: the same stream in every process for the same seed.
struct Rng {
  std::uint64_t s;
  double uniform() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return static_cast<double>((s * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
  }
  int poisson(double rate) {  // Knuth's method: fine for football scores
    const double limit = std::exp(-rate);
    int k = 0;
    for (double p = uniform(); p > limit; p *= uniform()) ++k;
    return k;
  }
};

Analysis analyse(Match m) {
  Rng rng{m.seed | 1};
  long home = 0, draw = 0, away = 0, goals = 0;
  for (long i = 0; i < m.simulations; ++i) {
    const int h = rng.poisson(m.home_rate), a = rng.poisson(m.away_rate);
    goals += h + a;
    (h > a ? home : h == a ? draw : away) += 1;
  }
  const auto n = static_cast<double>(m.simulations);
  return {m.home + " v " + m.away, home / n, draw / n, away / n, static_cast<double>(goals) / n};
}

// starmap's form: the fixture as separate arguments.
Analysis analyse_fixture(std::string home, std::string away, double home_rate, double away_rate, long sims) {
  const std::uint64_t seed = std::hash<std::string>{}(home + away);
  return analyse({std::move(home), std::move(away), home_rate, away_rate, sims, seed});
}

std::vector<Match> twenty_matches(long sims) {
  const char* teams[] = {"Arsenal", "Brighton", "Chelsea", "Everton", "Fulham", "Leeds", "Liverpool",
                         "Newcastle", "Spurs", "Wolves"};
  std::vector<Match> out;
  for (int i = 0; i < 20; ++i) {
    const int h = i % 10, a = (h + 1 + 4 * (i / 10)) % 10;  // twenty different fixtures
    out.push_back({teams[h], teams[a], 1.1 + 0.09 * h, 0.8 + 0.07 * a, sims, 0x9E3779B97F4A7C15ULL * (i + 1)});
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void print(const Analysis& a) {
  std::printf("  %-22s home %5.1f%%  draw %5.1f%%  away %5.1f%%  goals %.2f\n", a.fixture.c_str(), 100 * a.home_win,
              100 * a.draw, 100 * a.away_win, a.mean_goals);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  const long sims = argc > 1 ? std::atol(argv[1]) : 400'000;
  const auto matches = twenty_matches(sims);
  mproc::Pool pool;  // cpu_count() workers
  std::printf("twenty match analyses, %ld simulations each; Pool(%u)\n", sims, pool.processes());

  // map: one process, then the pool.
  auto t0 = std::chrono::steady_clock::now();
  std::vector<Analysis> expected;
  for (const auto& m : matches) expected.push_back(analyse(m));
  const double sequential = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  std::vector<Analysis> results = pool.map(analyse, matches, 1);
  const double parallel = seconds_since(t0);
  std::printf("Pool.map(analyse, matches):\n");
  for (const auto& a : results) print(a);
  bool ok = results == expected;
  std::printf("  one process %.3f s   Pool.map %.3f s   speed-up %.2fx   %s\n", sequential, parallel,
              sequential / parallel, ok ? "same results" : "RESULTS DIFFER");

  // starmap: each item a tuple of arguments.
  std::vector<std::tuple<std::string, std::string, double, double, long>> fixtures;
  for (const auto& m : matches) fixtures.emplace_back(m.home, m.away, m.home_rate, m.away_rate, sims);
  t0 = std::chrono::steady_clock::now();
  auto starred = pool.starmap(analyse_fixture, fixtures);
  std::printf("Pool.starmap(analyse_fixture, tuples): %zu analyses in %.3f s; first and last:\n", starred.size(),
              seconds_since(t0));
  print(starred.front());
  print(starred.back());
  ok = ok && starred.size() == matches.size();

  // imap: results stream in, in order, while later matches still run.
  t0 = std::chrono::steady_clock::now();
  auto stream = pool.imap(analyse, matches);
  std::size_t done = 0;
  double best = 0;
  std::string best_fixture;
  for (const Analysis& a : stream) {
    ++done;
    if (a.home_win > best) best = a.home_win, best_fixture = a.fixture;
    ok = ok && a == expected[done - 1];
    const int bar = static_cast<int>(done * 30 / matches.size());
    std::printf("\r  imap: [%-30.*s] %2zu/%zu  %.2f s", bar, "##############################", done, matches.size(),
                seconds_since(t0));
    std::fflush(stdout);
  }
  std::printf("\n  strongest home side: %s (%.1f%% home wins)\n", best_fixture.c_str(), 100 * best);
  ok = ok && done == matches.size();
  return ok ? 0 : 1;
}
