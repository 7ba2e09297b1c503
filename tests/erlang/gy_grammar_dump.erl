%% Prints what OTP's compiled diameter dictionaries say of the Gy grammar, for tests/test_gy_grammar.py:
%%
%% erl -noshell -pa DIR -run gy_grammar_dump main AvpName ...
%%
%% One line per message format, "msg Name Code Flags ApplicationId Avp=Min:Max ...", from OTP's RFC 6733 base
%% dictionary (CER/CEA, DWR/DWA, DPR/DPA, answer-message) and from gy_test.dia (the credit-control messages);
%% then one line per AVP named on the command line, "avp Name Code Flags Vendor" (the flags OTP sets when it
%% encodes the AVP), or "avp Name none" for an AVP no dictionary here defines.
-module(gy_grammar_dump).

-export([main/1]).

main(Avps) ->
    [message(diameter_gen_base_rfc6733, M) || M <- ['CER', 'CEA', 'DWR', 'DWA', 'DPR', 'DPA', 'answer-message']],
    [message(gy_test, M) || M <- ['CCR', 'CCA', 'RAR', 'RAA', 'ASR', 'ASA']],
    [avp(list_to_atom(A)) || A <- Avps],
    halt(0).

message(Module, Name) ->
    {Code, Flags, App} = Module:msg_header(Name),
    io:format("msg ~s ~p ~p ~p", [Name, Code, Flags, App]),
    [io:format(" ~s=~s", [Avp, arity(N)]) || {Avp, N} <- Module:avp_arity(Name)],
    io:format("~n").

arity(1) -> "1:1";
arity({Min, '*'}) -> io_lib:format("~p:*", [Min]);
arity({Min, Max}) -> io_lib:format("~p:~p", [Min, Max]).

avp(Name) ->
    case header(Name, [gy_test, rfc4005_nas]) of
        {Code, Flags, Vendor} -> io:format("avp ~s ~p ~p ~p~n", [Name, Code, Flags, Vendor]);
        none -> io:format("avp ~s none~n", [Name])
    end.

header(_Name, []) ->
    none;
header(Name, [Module | Rest]) ->
    try
        Module:avp_header(Name)
    catch
        _:_ -> header(Name, Rest)
    end.
