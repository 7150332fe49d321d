// lowbit.Format and lowbit.formats(): the spec grammar (docs/formats.md) as Python objects.
#include <cmath>

#include "bindings.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/formats/element.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit::python {

format format_of(const py::handle& spec) {
  if (py::isinstance<format>(spec)) return spec.cast<format>();
  if (!py::isinstance<py::str>(spec))
    throw py::type_error("a format is a spec string (e.g. 'mxfp4', 'int4/g32') or a lowbit.Format, got " +
                         std::string(py::str(py::type::of(spec).attr("__name__"))));
  return parse_format(spec.cast<std::string>());
}

namespace {

const char* kind_name(element_kind k) {
  switch (k) {
    case element_kind::minifloat: return "minifloat";
    case element_kind::int_sym: return "int";
    case element_kind::uint_asym: return "uint";
    case element_kind::lut: return "lut";
  }
  return "?";
}

const char* granularity_name(granularity g) {
  switch (g) {
    case granularity::none: return "none";
    case granularity::tensor: return "tensor";
    case granularity::row: return "row";
    case granularity::group: return "group";
  }
  return "?";
}

std::string scale_format_name(const format& f) {
  if (f.gran == granularity::none) return "";
  switch (f.scale.kind) {
    case scale_kind::e8m0: return "e8m0";
    case scale_kind::pow2: return "pow2";
    case scale_kind::element: return element_name(f.scale.element);
  }
  return "";
}

// The value of every code of an element of <= 16 bits, indexed by code (NaN codes are NaN).
py::array_t<float> codebook(const element_format& e) {
  if (e.bits > 16)
    throw py::value_error("the code book of " + element_name(e) + " has 2^" + std::to_string(e.bits) +
                          " entries; only elements of <= 16 bits are listed");
  const uint64_t n = code_count(e);
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  float* p = out.mutable_data();
  for (uint64_t c = 0; c < n; ++c) p[c] = decode_ref(e, static_cast<uint32_t>(c));
  return out;
}

// The distinct finite values of an element of <= 16 bits, ascending (+0 and -0 once, as +0).
// Symmetric ints are restricted (int8: -127..127): the spare code 100..0 is not a value.
py::array_t<float> finite_values(const element_format& e) {
  auto book = codebook(e);
  const element_limits l = limits_of(e);
  std::vector<float> v;
  for (py::ssize_t i = 0; i < book.size(); ++i) {
    const float x = book.data()[i];
    if (std::isfinite(x) && x >= l.min && x <= l.max) v.push_back(x == 0.0f ? 0.0f : x);
  }
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  py::array_t<float> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

}  // namespace

void register_formats(py::module_& m) {
  py::class_<element_format>(m, "Element", "The element format of a spec: what one code can hold.")
      .def_property_readonly("kind", [](const element_format& e) { return kind_name(e.kind); },
                             "'minifloat', 'int' (symmetric), 'uint' (with a zero point) or 'lut'")
      .def_readonly("bits", &element_format::bits, "storage bits of one code")
      .def_property_readonly("ebits", [](const element_format& e) -> py::object {
        return e.kind == element_kind::minifloat ? py::int_(e.ebits) : py::object(py::none());
      }, "exponent bits E (minifloats; None otherwise)")
      .def_property_readonly("mbits", [](const element_format& e) -> py::object {
        return e.kind == element_kind::minifloat ? py::int_(e.mbits) : py::object(py::none());
      }, "stored mantissa bits M (minifloats; None otherwise)")
      .def_property_readonly("bias", [](const element_format& e) -> py::object {
        return e.kind == element_kind::minifloat ? py::int_(e.bias) : py::object(py::none());
      }, "exponent bias (minifloats; None otherwise)")
      .def_property_readonly("variant", [](const element_format& e) -> py::object {
        return e.kind == element_kind::minifloat ? py::str(to_string(e.variant)) : py::object(py::none());
      }, "special values: 'ieee', 'fn', 'fnuz' or 'finite' (minifloats)")
      .def_readonly("subnormals", &element_format::subnormals)
      .def_readonly("frac_bits", &element_format::frac_bits, "int: value = code * 2^-frac_bits")
      .def_property_readonly("table", [](const element_format& e) -> py::object {
        if (e.kind != element_kind::lut) return py::none();
        py::array_t<float> t(static_cast<py::ssize_t>(e.table.size()));
        std::copy(e.table.begin(), e.table.end(), t.mutable_data());
        return t;
      }, "the ascending values of a lookup table (lut, nf4)")
      .def_property_readonly("name", [](const element_format& e) { return element_name(e); })
      .def("__repr__", [](const element_format& e) { return "lowbit.Element('" + element_name(e) + "')"; })
      .def("__eq__", [](const element_format& a, const element_format& b) { return a == b; });

  py::class_<format>(m, "Format",
                     "A parsed format spec (docs/formats.md): element, grouping, scale, rule and rounding.")
      .def(py::init([](const std::string& spec) { return parse_format(spec); }), py::arg("spec"))
      .def_property_readonly("name", [](const format& f) { return format_name(f); }, "the canonical spec")
      .def_readonly("element", &format::element)
      .def_property_readonly("granularity", [](const format& f) { return granularity_name(f.gran); },
                             "'none' (a plain cast), 'tensor', 'row' (/c) or 'group' (/gK)")
      .def_property_readonly("group", [](const format& f) -> py::object {
        return f.gran == granularity::group ? py::int_(f.group_size) : py::object(py::none());
      }, "elements per group (group granularity; None otherwise)")
      .def_property_readonly("scale", [](const format& f) -> py::object {
        const std::string s = scale_format_name(f);
        return s.empty() ? py::object(py::none()) : py::str(s);
      }, "the scale format ('fp32', 'e8m0', 'e4m3fn', 'pow2', ...); None without scales")
      .def_property_readonly("rounding", [](const format& f) { return to_string(f.rounding); })
      .def_readonly("seed", &format::seed, "stochastic rounding's seed (~sr:SEED)")
      .def_readonly("sr_bits", &format::sr_bits,
                    "stochastic rounding's random bits per element (~srR: R; 0 for the exact ~sr)")
      .def_property_readonly("bits_per_element", [](const format& f) { return bits_per_element(f); },
                             "element bits plus group scale bits per element")
      .def_property_readonly("bits_description", [](const format& f) { return bits_description(f); })
      .def_property_readonly("max", [](const format& f) { return limits_of(f.element).max; },
                             "the element's largest finite value")
      .def_property_readonly("min", [](const format& f) { return limits_of(f.element).min; })
      .def_property_readonly("min_normal", [](const format& f) { return limits_of(f.element).min_normal; })
      .def_property_readonly("min_subnormal", [](const format& f) { return limits_of(f.element).min_subnormal; })
      .def_property_readonly("epsilon", [](const format& f) { return limits_of(f.element).epsilon; })
      .def_property_readonly("codebook", [](const format& f) { return codebook(f.element); },
                             "the element's decoding of every code, indexed by code (<= 16-bit elements; "
                             "the spare code of a symmetric int decodes to -2^(N-1), which is not a value)")
      .def_property_readonly("values", [](const format& f) { return finite_values(f.element); },
                             "the element's distinct finite values, ascending (<= 16-bit elements)")
      .def("with_seed", [](format f, uint64_t seed) {
        f.seed = seed;
        return f;
      }, py::arg("seed"), "the same format with stochastic rounding's seed replaced")
      .def("__str__", [](const format& f) { return format_name(f); })
      .def("__repr__", [](const format& f) { return "lowbit.Format('" + format_name(f) + "')"; })
      .def("__eq__", [](const format& a, const py::object& b) {
        try {
          return a == format_of(b);
        } catch (const std::exception&) {
          return false;
        }
      })
      .def("__hash__", [](const format& f) { return py::hash(py::str(format_name(f))); })
      .def(py::pickle([](const format& f) { return format_name(f); },
                      [](const std::string& s) { return parse_format(s); }));
  py::implicitly_convertible<py::str, format>();

  m.def("formats", [] {
    py::list out;
    for (const auto& n : named_formats()) out.append(py::make_tuple(n.name, n.description));
    return out;
  }, "The named formats of the literature: (name, description) pairs.");
}

}  // namespace lowbit::python
