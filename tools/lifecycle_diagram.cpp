// Writes the C2D message lifecycle as Graphviz DOT, read from the Boost.MSM
// transition table itself (include/devicebound/lifecycle.hpp), so the diagram
// in docs/lifecycle.md cannot drift from the code.
//
//   lifecycle_diagram > docs/lifecycle.dot && dot -Tsvg docs/lifecycle.dot -o docs/lifecycle.svg
//   lifecycle_diagram --markdown   (the table as Markdown)
#include <boost/mpl/for_each.hpp>
#include <cstring>
#include <devicebound/lifecycle.hpp>
#include <iostream>
#include <string>
#include <type_traits>

namespace {

template <class T>
struct wrap {};

template <class T>
std::string name_of() {
  if constexpr (std::is_same_v<T, boost::msm::front::none>)
    return "";
  else
    return T::name;
}

struct dot_row {
  std::ostream& out;
  template <class Row>
  void operator()(wrap<Row>) const {
    std::string label = name_of<typename Row::Evt>();
    if (auto g = name_of<typename Row::Guard>(); !g.empty())
      label += "\\n[" + g + "]";
    if (auto a = name_of<typename Row::Action>(); !a.empty())
      label += "\\n/ " + a;
    out << "  " << name_of<typename Row::Source>() << " -> " << name_of<typename Row::Target>()
        << " [label=\"" << label << "\"];\n";
  }
};

struct markdown_row {
  std::ostream& out;
  template <class Row>
  void operator()(wrap<Row>) const {
    out << "| " << name_of<typename Row::Source>() << " | " << name_of<typename Row::Evt>() << " | "
        << name_of<typename Row::Target>() << " | " << name_of<typename Row::Action>() << " | "
        << name_of<typename Row::Guard>() << " |\n";
  }
};

}  // namespace

int main(int argc, char** argv) {
  using table = devicebound::lifecycle::definition::transition_table;
  if (argc > 1 && std::strcmp(argv[1], "--markdown") == 0) {
    std::cout << "| source | event | target | action | guard |\n|---|---|---|---|---|\n";
    boost::mpl::for_each<table, wrap<boost::mpl::placeholders::_1>>(markdown_row{std::cout});
    return 0;
  }
  std::cout
      << "digraph lifecycle {\n"
         "  rankdir=LR;\n"
         "  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n"
         "  edge [fontname=\"Helvetica\", fontsize=10];\n"
         "  start [shape=point];\n"
         "  start -> Enqueued [label=\"send accepted\"];\n"
         "  Completed [peripheries=2]; DeadLettered [peripheries=2]; Purged [peripheries=2];\n";
  boost::mpl::for_each<table, wrap<boost::mpl::placeholders::_1>>(dot_row{std::cout});
  std::cout << "}\n";
  return 0;
}
