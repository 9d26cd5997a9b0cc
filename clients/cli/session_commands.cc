#include "clients/cli/session_commands.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/text_pieces.h"
#include "nlohmann/json.hpp"
#include "proto/deltaserve/v1/sessions.grpc.pb.h"

ABSL_FLAG(bool, json, false,
          "session get, pause, resume, list: print JSON instead of text.");
ABSL_FLAG(int, page_size, 0,
          "session list: sessions asked for per page; 0: the server's "
          "default.");
ABSL_FLAG(std::string, out, "", "session export: the file to write.");
ABSL_FLAG(std::string, in, "", "session import: the export file to read.");
ABSL_FLAG(std::string, format, "deltaserve",
          "session export, import: the file's format: deltaserve (the "
          "server's own checksummed stream, any model) or fla (fla's cache "
          "layout in safetensors, delta_net and gated_deltanet models).");
ABSL_FLAG(std::string, file, "",
          "session append: a UTF-8 text file whose text is appended.");
ABSL_FLAG(int, piece_tokens, 65536,
          "session append --token_ids: token ids per piece.");
ABSL_FLAG(int, piece_bytes, 262144,
          "session append --file: the most bytes of text per piece (cut "
          "after a newline where the piece has one).");

namespace deltaserve {
namespace cli {

const char kSessionUsage[] =
    "  session create               creates a session; prints its id\n"
    "  session get ID               prints the session, one key: value per\n"
    "                               line (--json: one JSON object)\n"
    "  session list                 one line per session: ID  num_tokens  "
    "tier\n"
    "                               state_bytes [--page_size=N --json]\n"
    "  session pause ID             moves its state to disk; prints it\n"
    "  session resume ID            loads it back; prints it\n"
    "  session fork ID              copies it; prints the new id\n"
    "  session delete ID            removes it\n"
    "  session export ID --out=FILE writes its export stream to FILE\n"
    "  session import --in=FILE     stores an export as a new session; "
    "prints\n"
    "                               the new id\n"
    "            export, import: [--format=deltaserve|fla] (fla: fla's "
    "cache\n"
    "            layout in safetensors, for delta_net and gated_deltanet)\n"
    "  session append ID --token_ids=1,2,3 | --prompt=TEXT | --file=PATH\n"
    "            [--piece_tokens=N --piece_bytes=N]  feeds history in pieces\n"
    "            without generating, with progress on stderr";

namespace {

// Pieces of an Append call sent but not yet acknowledged by a progress
// message.
constexpr int kMaxPiecesInFlight = 2;
constexpr size_t kImportChunkBytes = size_t{1} << 20;
constexpr size_t kFileReadBytes = size_t{64} << 10;

std::unique_ptr<v1::Sessions::Stub> NewStub() {
  return v1::Sessions::NewStub(Connect());
}

// "device" for SESSION_TIER_DEVICE; the number for a value this client does
// not know.
std::string TierName(v1::SessionTier tier) {
  absl::string_view name = v1::SessionTier_Name(tier);
  if (name.empty()) return absl::StrCat(static_cast<int>(tier));
  absl::ConsumePrefix(&name, "SESSION_TIER_");
  return absl::AsciiStrToLower(name);
}

// RFC 3339 in UTC, to the second.
std::string FormatMicros(int64_t unix_micros) {
  return absl::FormatTime("%Y-%m-%d%ET%H:%M:%SZ",
                          absl::FromUnixMicros(unix_micros),
                          absl::UTCTimeZone());
}

// The session's fields under their proto names, in proto order.
nlohmann::ordered_json SessionJson(const v1::Session& session) {
  nlohmann::ordered_json json;
  json["session_id"] = session.session_id();
  json["model_fingerprint"] = session.model_fingerprint();
  json["num_tokens"] = session.num_tokens();
  json["state_bytes"] = session.state_bytes();
  json["tier"] = TierName(session.tier());
  json["create_time_unix_micros"] = session.create_time_unix_micros();
  json["last_used_unix_micros"] = session.last_used_unix_micros();
  json["snapshot_seq"] = session.snapshot_seq();
  json["busy"] = session.busy();
  return json;
}

std::string DumpJson(const nlohmann::ordered_json& json) {
  return json.dump(-1, ' ', false,
                   nlohmann::ordered_json::error_handler_t::replace);
}

void PrintSession(const v1::Session& session) {
  if (absl::GetFlag(FLAGS_json)) {
    absl::PrintF("%s\n", DumpJson(SessionJson(session)));
    return;
  }
  absl::PrintF("session_id: %s\n", session.session_id());
  absl::PrintF("num_tokens: %d\n", session.num_tokens());
  absl::PrintF("state_bytes: %d\n", session.state_bytes());
  absl::PrintF("tier: %s\n", TierName(session.tier()));
  absl::PrintF("snapshot_seq: %d\n", session.snapshot_seq());
  absl::PrintF("busy: %s\n", session.busy() ? "true" : "false");
  absl::PrintF("created: %s\n",
               FormatMicros(session.create_time_unix_micros()));
  absl::PrintF("last_used: %s\n",
               FormatMicros(session.last_used_unix_micros()));
  absl::PrintF("model_fingerprint: %s\n", session.model_fingerprint());
}

// "1.5 MiB".
std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes) / 1024;
  const char* unit = "KiB";
  for (const char* next : {"MiB", "GiB", "TiB"}) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return absl::StrFormat("%.1f %s", value, unit);
}

int Create() {
  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Session session;
  const grpc::Status status =
      stub->CreateSession(&context, v1::CreateSessionRequest(), &session);
  if (!status.ok()) return RpcError(status);
  absl::PrintF("%s\n", session.session_id());
  return 0;
}

enum class Print { kSession, kId };

// Calls a unary Sessions method whose request names a session and whose
// response is a Session, then prints the session or only its id.
template <typename Request>
int CallSessionMethod(grpc::Status (v1::Sessions::Stub::*method)(
                          grpc::ClientContext*, const Request&, v1::Session*),
                      const std::string& session_id, Print print) {
  Request request;
  request.set_session_id(session_id);
  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Session session;
  const grpc::Status status = ((*stub).*method)(&context, request, &session);
  if (!status.ok()) return RpcError(status);
  if (print == Print::kId) {
    absl::PrintF("%s\n", session.session_id());
  } else {
    PrintSession(session);
  }
  return 0;
}

int Delete(const std::string& session_id) {
  v1::DeleteSessionRequest request;
  request.set_session_id(session_id);
  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::DeleteSessionResponse response;
  const grpc::Status status = stub->DeleteSession(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  return 0;
}

void WarnDamaged(const std::vector<std::string>& damaged) {
  for (const std::string& id : damaged) {
    absl::FPrintF(stderr,
                  "warning: session %s is damaged: its stored metadata fails "
                  "its checksum (session delete %s removes it)\n",
                  id, id);
  }
}

int List() {
  const int page_size = absl::GetFlag(FLAGS_page_size);
  if (page_size < 0) return UsageError("--page_size must not be negative");
  const bool json = absl::GetFlag(FLAGS_json);
  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  nlohmann::ordered_json array = nlohmann::ordered_json::array();
  std::vector<std::string> damaged;
  std::string page_token;
  do {
    v1::ListSessionsRequest request;
    request.set_page_size(page_size);
    request.set_page_token(page_token);
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::ListSessionsResponse response;
    const grpc::Status status =
        stub->ListSessions(&context, request, &response);
    if (!status.ok()) {
      std::fflush(stdout);
      WarnDamaged(damaged);
      return RpcError(status);
    }
    for (const v1::Session& session : response.sessions()) {
      if (json) {
        array.push_back(SessionJson(session));
      } else {
        absl::PrintF("%s  %d  %s  %d\n", session.session_id(),
                     session.num_tokens(), TierName(session.tier()),
                     session.state_bytes());
      }
    }
    damaged.insert(damaged.end(), response.damaged_session_ids().begin(),
                   response.damaged_session_ids().end());
    if (!page_token.empty() && response.next_page_token() == page_token) {
      std::fflush(stdout);
      WarnDamaged(damaged);
      return LocalError(
          absl::InternalError("the server returned the same page token twice"));
    }
    page_token = response.next_page_token();
  } while (!page_token.empty());
  if (json) absl::PrintF("%s\n", DumpJson(array));
  std::fflush(stdout);
  WarnDamaged(damaged);
  return 0;
}

// The --format flag's value; a usage error for an unknown one.
std::optional<v1::SessionFormat> FormatFlag() {
  const std::string format = absl::GetFlag(FLAGS_format);
  if (format == "deltaserve") return v1::SESSION_FORMAT_DELTASERVE;
  if (format == "fla") return v1::SESSION_FORMAT_FLA_CACHE;
  return std::nullopt;
}

int BadFormat() {
  return UsageError(absl::StrCat("--format must be deltaserve or fla, not \"",
                                 absl::GetFlag(FLAGS_format), "\""));
}

int Export(const std::string& session_id) {
  const std::string path = absl::GetFlag(FLAGS_out);
  if (path.empty()) return UsageError("session export needs --out=FILE");
  const std::optional<v1::SessionFormat> format = FormatFlag();
  if (!format.has_value()) return BadFormat();
  const std::string tmp_path = absl::StrCat(path, ".tmp");
  std::FILE* file = std::fopen(tmp_path.c_str(), "wb");
  if (file == nullptr) {
    return LocalError(
        absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp_path)));
  }
  // Closes and removes the temporary file; returns `exit_status`.
  const auto fail = [&](int exit_status) {
    if (file != nullptr) std::fclose(file);
    std::remove(tmp_path.c_str());
    return exit_status;
  };

  v1::ExportSessionRequest request;
  request.set_session_id(session_id);
  request.set_format(*format);
  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  grpc::ClientContext context;
  SetDeadline(&context);
  std::unique_ptr<grpc::ClientReader<v1::ExportSessionChunk>> reader =
      stub->ExportSession(&context, request);
  v1::ExportSessionChunk chunk;
  int64_t written = 0;
  int64_t total_bytes = 0;
  bool first = true;
  absl::Status write_status;
  while (reader->Read(&chunk)) {
    if (first) total_bytes = chunk.total_bytes();
    first = false;
    const std::string& data = chunk.data();
    if (std::fwrite(data.data(), 1, data.size(), file) != data.size()) {
      write_status =
          absl::ErrnoToStatus(errno, absl::StrCat("writing ", tmp_path));
      context.TryCancel();
      break;
    }
    written += data.size();
  }
  const grpc::Status status = reader->Finish();
  if (!write_status.ok()) return fail(LocalError(write_status));
  if (!status.ok()) return fail(RpcError(status));
  if (total_bytes > 0 && written != total_bytes) {
    return fail(LocalError(absl::DataLossError(
        absl::StrFormat("the export stream ended after %d of its %d bytes",
                        written, total_bytes))));
  }
  if (std::fflush(file) != 0 || fsync(fileno(file)) != 0) {
    return fail(LocalError(
        absl::ErrnoToStatus(errno, absl::StrCat("writing ", tmp_path))));
  }
  const int close_result = std::fclose(file);
  file = nullptr;
  if (close_result != 0) {
    return fail(LocalError(
        absl::ErrnoToStatus(errno, absl::StrCat("closing ", tmp_path))));
  }
  if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    return fail(LocalError(absl::ErrnoToStatus(
        errno, absl::StrCat("renaming ", tmp_path, " to ", path))));
  }
  absl::FPrintF(stderr, "wrote %d bytes to %s\n", written, path);
  return 0;
}

int Import() {
  const std::string path = absl::GetFlag(FLAGS_in);
  if (path.empty()) return UsageError("session import needs --in=FILE");
  const std::optional<v1::SessionFormat> format = FormatFlag();
  if (!format.has_value()) return BadFormat();
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return LocalError(
        absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path)));
  }
  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Session session;
  std::unique_ptr<grpc::ClientWriter<v1::ImportSessionChunk>> writer =
      stub->ImportSession(&context, &session);
  v1::ImportSessionChunk chunk;
  chunk.set_format(*format);
  bool first = true;
  absl::Status read_status;
  while (true) {
    std::string* data = chunk.mutable_data();
    data->resize(kImportChunkBytes);
    const size_t n = std::fread(data->data(), 1, data->size(), file);
    data->resize(n);
    // The first chunk goes even when empty: it names the format.
    if ((n > 0 || first) && !writer->Write(chunk)) break;  // Finish says why.
    first = false;
    if (n < kImportChunkBytes) {
      if (std::ferror(file)) {
        read_status =
            absl::ErrnoToStatus(errno, absl::StrCat("reading ", path));
      }
      break;
    }
  }
  std::fclose(file);
  if (!read_status.ok()) {
    // Nothing is stored for a stream that does not end with WritesDone.
    context.TryCancel();
    writer->Finish();
    return LocalError(read_status);
  }
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  if (!status.ok()) return RpcError(status);
  absl::PrintF("%s\n", session.session_id());
  return 0;
}

// The input of an Append call, a piece at a time. Not thread-safe.
class PieceSource {
 public:
  virtual ~PieceSource() = default;

  // Sets the next piece as the input of `request` and returns its size in
  // units(); returns 0 when no pieces are left. Errors: those of reading
  // the input file.
  virtual absl::StatusOr<int64_t> Next(v1::AppendRequest* request) = 0;

  // The size of the whole input in units(); -1 when not known.
  virtual int64_t total() const = 0;

  // "tokens" or "bytes".
  virtual const char* units() const = 0;
};

// Token ids, sent in pieces of a fixed number of ids.
class TokenPieces final : public PieceSource {
 public:
  TokenPieces(std::vector<int32_t> ids, int64_t piece_tokens)
      : ids_(std::move(ids)), piece_tokens_(piece_tokens) {}

  absl::StatusOr<int64_t> Next(v1::AppendRequest* request) override {
    const int64_t n = std::min<int64_t>(piece_tokens_, ids_.size() - next_);
    if (n == 0) return 0;
    request->mutable_token_ids()->mutable_ids()->Add(ids_.begin() + next_,
                                                     ids_.begin() + next_ + n);
    next_ += n;
    return n;
  }
  int64_t total() const override { return ids_.size(); }
  const char* units() const override { return "tokens"; }

 private:
  const std::vector<int32_t> ids_;
  const int64_t piece_tokens_;
  int64_t next_ = 0;
};

// Text from a string or a file, sent in pieces of at most a number of bytes
// cut by TextPieceLength.
class TextPieces final : public PieceSource {
 public:
  // One piece: all of `text` (none when it is empty).
  static std::unique_ptr<TextPieces> FromString(std::string text) {
    const int64_t total = text.size();
    return std::unique_ptr<TextPieces>(
        new TextPieces(std::move(text), nullptr, "", total,
                       std::numeric_limits<size_t>::max()));
  }

  // Reads `path` as it goes. Errors: those of opening the file.
  static absl::StatusOr<std::unique_ptr<TextPieces>> FromFile(
      const std::string& path, size_t piece_bytes) {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
    }
    struct stat info;
    const int64_t total =
        fstat(fileno(file), &info) == 0 && S_ISREG(info.st_mode)
            ? static_cast<int64_t>(info.st_size)
            : -1;
    return std::unique_ptr<TextPieces>(
        new TextPieces("", file, path, total, piece_bytes));
  }

  ~TextPieces() override {
    if (file_ != nullptr) std::fclose(file_);
  }

  absl::StatusOr<int64_t> Next(v1::AppendRequest* request) override {
    // Buffer more than a piece, so that a cut sees what follows it.
    while (file_ != nullptr && buffer_.size() - start_ <= piece_bytes_) {
      buffer_.erase(0, start_);
      start_ = 0;
      const size_t old_size = buffer_.size();
      const size_t want = std::max(piece_bytes_ + 1 - old_size, kFileReadBytes);
      buffer_.resize(old_size + want);
      const size_t n = std::fread(buffer_.data() + old_size, 1, want, file_);
      buffer_.resize(old_size + n);
      if (n < want) {
        if (std::ferror(file_)) {
          return absl::ErrnoToStatus(errno, absl::StrCat("reading ", path_));
        }
        std::fclose(file_);
        file_ = nullptr;
      }
    }
    const absl::string_view rest = absl::string_view(buffer_).substr(start_);
    if (rest.empty()) return 0;
    const size_t n = TextPieceLength(rest, piece_bytes_);
    request->set_text(rest.data(), n);
    start_ += n;
    return static_cast<int64_t>(n);
  }
  int64_t total() const override { return total_; }
  const char* units() const override { return "bytes"; }

 private:
  TextPieces(std::string text, std::FILE* file, std::string path, int64_t total,
             size_t piece_bytes)
      : buffer_(std::move(text)),
        file_(file),
        path_(std::move(path)),
        total_(total),
        piece_bytes_(piece_bytes) {}

  std::string buffer_;  // buffer_[start_, end) is not sent yet
  size_t start_ = 0;
  std::FILE* file_;  // null once read to its end
  const std::string path_;
  const int64_t total_;
  const size_t piece_bytes_;
};

// Shows an Append call's progress on stderr: a bar redrawn in place when
// stderr is a terminal, otherwise one line per progress message. Not
// thread-safe.
class ProgressDisplay {
 public:
  ProgressDisplay(const char* units, int64_t total)
      : units_(units), total_(total), tty_(isatty(fileno(stderr)) == 1) {}

  void Sent(int64_t sent) {
    sent_ = sent;
    if (tty_) Draw();
  }

  void Progress(const v1::AppendProgress& progress) {
    ingested_ = progress.tokens_ingested();
    tokens_per_second_ = progress.tokens_per_second();
    if (tty_) {
      Draw();
    } else {
      absl::FPrintF(stderr,
                    "sent %s, %d tokens ingested, session has %d tokens "
                    "(snapshot %d), %.1f tok/s\n",
                    SentText(), progress.tokens_ingested(),
                    progress.session_tokens(), progress.snapshot_seq(),
                    progress.tokens_per_second());
    }
  }

  // Ends the bar's line.
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  static constexpr int kBarWidth = 30;

  // "1.5 MiB/3.0 MiB" or "65536/200000 tokens".
  std::string SentText() const {
    const bool bytes = absl::string_view(units_) == "bytes";
    const std::string sent = bytes ? FormatBytes(sent_) : absl::StrCat(sent_);
    if (total_ < 0) return bytes ? sent : absl::StrCat(sent, " ", units_);
    return bytes ? absl::StrCat(sent, "/", FormatBytes(total_))
                 : absl::StrCat(sent, "/", total_, " ", units_);
  }

  void Draw() {
    std::string bar;
    if (total_ > 0) {
      const double fraction =
          std::min(1.0, static_cast<double>(sent_) / total_);
      const int filled = static_cast<int>(fraction * kBarWidth);
      bar = absl::StrFormat("[%s%s] %3d%% ", std::string(filled, '='),
                            std::string(kBarWidth - filled, ' '),
                            static_cast<int>(fraction * 100));
    }
    absl::FPrintF(stderr, "\r%ssent %s, %d tokens ingested, %.0f tok/s\033[K",
                  bar, SentText(), ingested_, tokens_per_second_);
    std::fflush(stderr);
    drawn_ = true;
  }

  const char* const units_;
  const int64_t total_;
  const bool tty_;
  int64_t sent_ = 0;
  int64_t ingested_ = 0;
  double tokens_per_second_ = 0;
  bool drawn_ = false;
};

int Append(const std::string& session_id) {
  const std::optional<std::string> prompt = absl::GetFlag(FLAGS_prompt);
  const std::vector<std::string> token_ids = absl::GetFlag(FLAGS_token_ids);
  const std::string path = absl::GetFlag(FLAGS_file);
  if (prompt.has_value() + !token_ids.empty() + !path.empty() != 1) {
    return UsageError(
        "session append needs exactly one of --token_ids, --prompt and "
        "--file");
  }
  const int piece_tokens = absl::GetFlag(FLAGS_piece_tokens);
  const int piece_bytes = absl::GetFlag(FLAGS_piece_bytes);
  if (piece_tokens < 1) return UsageError("--piece_tokens must be positive");
  if (piece_bytes < 1) return UsageError("--piece_bytes must be positive");
  std::unique_ptr<PieceSource> source;
  if (!token_ids.empty()) {
    std::vector<int32_t> ids;
    std::string error;
    if (!ParseIds(token_ids, &ids, &error)) {
      return UsageError(absl::StrCat("--token_ids: ", error));
    }
    source = std::make_unique<TokenPieces>(std::move(ids), piece_tokens);
  } else if (prompt.has_value()) {
    source = TextPieces::FromString(*prompt);
  } else {
    absl::StatusOr<std::unique_ptr<TextPieces>> text =
        TextPieces::FromFile(path, piece_bytes);
    if (!text.ok()) return LocalError(text.status());
    source = *std::move(text);
  }

  std::unique_ptr<v1::Sessions::Stub> stub = NewStub();
  grpc::ClientContext context;
  SetDeadline(&context);
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::AppendRequest, v1::AppendProgress>>
      stream = stub->Append(&context);
  ProgressDisplay display(source->units(), source->total());
  std::optional<v1::AppendProgress> last;
  v1::AppendProgress progress;
  int64_t sent = 0;
  int in_flight = 0;
  bool first = true;
  bool more = true;
  bool stream_ok = true;
  absl::Status read_status;
  // Keeps up to kMaxPiecesInFlight pieces ahead of the progress messages,
  // so that the server has the next piece while it ingests one.
  while (true) {
    while (more && stream_ok && in_flight < kMaxPiecesInFlight) {
      v1::AppendRequest request;
      if (first) request.set_session_id(session_id);
      absl::StatusOr<int64_t> n = source->Next(&request);
      if (!n.ok()) {
        read_status = n.status();
        break;
      }
      if (*n == 0) {
        more = false;
        if (!first) break;  // Else the session id goes alone.
      }
      if (!stream->Write(request)) {
        stream_ok = false;  // Finish says why.
        break;
      }
      first = false;
      if (*n > 0) {
        sent += *n;
        ++in_flight;
        display.Sent(sent);
      }
    }
    if (!read_status.ok() || !more || !stream_ok) break;
    if (!stream->Read(&progress)) break;  // Finish says why.
    in_flight = std::max(0, in_flight - 1);
    last = progress;
    display.Progress(progress);
  }
  if (!read_status.ok()) {
    context.TryCancel();
    stream->Finish();
    display.Finish();
    return LocalError(read_status);
  }
  stream->WritesDone();
  while (stream->Read(&progress)) {
    last = progress;
    display.Progress(progress);
  }
  const grpc::Status status = stream->Finish();
  display.Finish();
  if (!status.ok()) return RpcError(status);

  if (!last.has_value()) {
    // Nothing was fed (empty input), so no progress came: ask for the
    // session's counts.
    v1::GetSessionRequest request;
    request.set_session_id(session_id);
    grpc::ClientContext get_context;
    SetDeadline(&get_context);
    v1::Session session;
    const grpc::Status get_status =
        stub->GetSession(&get_context, request, &session);
    if (!get_status.ok()) return RpcError(get_status);
    last.emplace();
    last->set_session_tokens(session.num_tokens());
    last->set_snapshot_seq(session.snapshot_seq());
  }
  absl::FPrintF(stderr,
                "appended %d tokens; session has %d tokens (snapshot %d), "
                "%.1f tok/s\n",
                last->tokens_ingested(), last->session_tokens(),
                last->snapshot_seq(), last->tokens_per_second());
  return 0;
}

}  // namespace

int RunSessionCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    return UsageError(
        "session needs a command: create, get, list, pause, resume, fork, "
        "delete, export, import or append");
  }
  const std::string& command = args[0];
  if (command == "create" || command == "list" || command == "import") {
    if (args.size() != 1) {
      return UsageError(absl::StrCat(
          "session ", command, " takes no arguments, got \"", args[1], "\""));
    }
    if (command == "create") return Create();
    if (command == "list") return List();
    return Import();
  }
  if (command == "get" || command == "pause" || command == "resume" ||
      command == "fork" || command == "delete" || command == "export" ||
      command == "append") {
    if (args.size() < 2 || args[1].empty()) {
      return UsageError(
          absl::StrCat("session ", command, " needs a session ID"));
    }
    if (args.size() > 2) {
      return UsageError(absl::StrCat("session ", command,
                                     " takes one session ID, got \"", args[2],
                                     "\" too"));
    }
    const std::string& id = args[1];
    if (command == "get") {
      return CallSessionMethod(&v1::Sessions::Stub::GetSession, id,
                               Print::kSession);
    }
    if (command == "pause") {
      return CallSessionMethod(&v1::Sessions::Stub::PauseSession, id,
                               Print::kSession);
    }
    if (command == "resume") {
      return CallSessionMethod(&v1::Sessions::Stub::ResumeSession, id,
                               Print::kSession);
    }
    if (command == "fork") {
      return CallSessionMethod(&v1::Sessions::Stub::ForkSession, id,
                               Print::kId);
    }
    if (command == "delete") return Delete(id);
    if (command == "export") return Export(id);
    return Append(id);
  }
  return UsageError(absl::StrCat("unknown session command \"", command, "\""));
}

}  // namespace cli
}  // namespace deltaserve
