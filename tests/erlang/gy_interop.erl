%% The Erlang/OTP diameter peer of tests/test_gy_erlang.py: a PGW built on OTP's diameter application.
%%
%% erl -noshell -pa DIR -run gy_interop main Host Port Imsi
%%
%% OTP does the capabilities exchange (CER/CEA) and the watchdog (DWR/DWA both ways) itself. This module sends
%% CCR-I, CCR-U and CCR-E, prints "ready", answers the server's RAR and ASR (printing each), sends CCR-T, waits
%% until DWR/DWA went both ways, then removes the transport (DPR/DPA). Each step prints one line
%% "step key=value ..." on stdout for the test to check; the exit status is 0 only if every step happened.
-module(gy_interop).

-export([main/1, tw/0]).
-export([peer_up/4, peer_down/4, pick_peer/5, prepare_request/4, prepare_retransmit/4, handle_answer/5,
         handle_error/5, handle_request/4]).

-include_lib("diameter/include/diameter.hrl").

-define(SVC, gy_interop).
-define(APP, gy).

main([Host, PortText, Imsi]) ->
    try run(Host, list_to_integer(PortText), list_to_binary(Imsi)) of
        ok -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format("failed ~p:~p ~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

run(Host, Port, Imsi) ->
    ok = diameter:start(),
    Self = self(),
    ok = diameter:start_service(?SVC, [{'Origin-Host', "erl.test"},
                                       {'Origin-Realm', "test"},
                                       {'Vendor-Id', 0},
                                       {'Product-Name', "otp-diameter"},
                                       {'Auth-Application-Id', [4]},
                                       {decode_format, map},
                                       %% rfc4006_cc.dia knows no 3GPP AVPs, and the server sends TS 32.299 ones
                                       %% with the M bit (Volume-Quota-Threshold in the MSCC): accept them in
                                       %% the grammar's * [ AVP ] instead of answering 5001, as a Gy PGW would.
                                       {strict_mbit, false},
                                       {string_decode, false},
                                       {application, [{alias, ?APP},
                                                      {dictionary, gy_test},
                                                      {module, [?MODULE, Self]},
                                                      {answer_errors, callback}]}]),
    {ok, Address} = inet:parse_address(Host),
    {ok, Transport} = diameter:add_transport(?SVC, {connect, [{transport_module, diameter_tcp},
                                                             {transport_config, [{raddr, Address},
                                                                                 {rport, Port}]},
                                                             {watchdog_timer, {?MODULE, tw, []}}]}),
    wait(peer_up, 10000),
    io:format("cea ok~n"),
    Session = list_to_binary(diameter:session_id("erl.test")),
    Initial = ccr(Session, 1, 0, [{'Subscription-Id', [[{'Subscription-Id-Type', 1},
                                                         {'Subscription-Id-Data', Imsi}]]},
                                  {'Multiple-Services-Indicator', [1]},
                                  {'Multiple-Services-Credit-Control',
                                   [[{'Requested-Service-Unit', [[]]}, {'Rating-Group', [10]}]]}]),
    Cca1 = call(Initial),
    io:format("ccr_i rc=~p mscc_rc=~p granted=~p validity=~p volume_threshold=~p~n",
              [field('Result-Code', Cca1), mscc(Cca1, 'Result-Code'), granted(Cca1), mscc(Cca1, 'Validity-Time'),
               volume_threshold(Cca1)]),
    Update = ccr(Session, 2, 1, [{'Multiple-Services-Credit-Control',
                                  [[{'Requested-Service-Unit', [[]]},
                                    {'Used-Service-Unit', [[{'CC-Total-Octets', [1000000]}]]},
                                    {'Rating-Group', [10]}]]}]),
    Cca2 = call(Update),
    io:format("ccr_u rc=~p mscc_rc=~p~n", [field('Result-Code', Cca2), mscc(Cca2, 'Result-Code')]),
    EventSession = list_to_binary(diameter:session_id("erl.test")),
    Event = ccr(EventSession, 4, 0, [{'Subscription-Id', [[{'Subscription-Id-Type', 1},
                                                          {'Subscription-Id-Data', Imsi}]]},
                                     {'Requested-Action', [3]},
                                     {'Multiple-Services-Credit-Control',
                                      [[{'Requested-Service-Unit', [[{'CC-Service-Specific-Units', [2]}]]},
                                        {'Rating-Group', [40]}]]}]),
    Cca3 = call(Event),
    Cost = field('Cost-Information', Cca3),
    UnitValue = field('Unit-Value', Cost),
    io:format("ccr_e rc=~p cost_digits=~p cost_exponent=~p currency=~p~n",
              [field('Result-Code', Cca3), field('Value-Digits', UnitValue), field('Exponent', UnitValue),
               field('Currency-Code', Cost)]),
    io:format("ready session=~s~n", [Session]),
    {rar, Rar} = wait_for(rar, 15000),
    io:format("rar session=~s type=~p rating_group=~p~n",
              [field('Session-Id', Rar), field('Re-Auth-Request-Type', Rar), field('Rating-Group', Rar)]),
    {asr, Asr} = wait_for(asr, 15000),
    io:format("asr session=~s~n", [field('Session-Id', Asr)]),
    Terminate = ccr(Session, 3, 2, [{'Termination-Cause', [1]},
                                    {'Multiple-Services-Credit-Control',
                                     [[{'Used-Service-Unit', [[{'CC-Total-Octets', [0]}]]},
                                       {'Rating-Group', [10]}]]}]),
    Cca4 = call(Terminate),
    io:format("ccr_t rc=~p~n", [field('Result-Code', Cca4)]),
    {DwrIn, DwaIn} = watchdog_exchanged(erlang:monotonic_time(millisecond) + 15000),
    io:format("watchdog dwr_received=~p dwa_received=~p~n", [DwrIn, DwaIn]),
    ok = diameter:remove_transport(?SVC, Transport),
    wait(peer_down, 10000),
    io:format("dpr ok~n"),
    ok.

%% The watchdog interval: OTP refuses a fixed Tw under the RFC 3539 minimum of 6 s, a function may go lower,
%% which keeps the test short (RFC 3539 jitter included).
tw() ->
    1000 + rand:uniform(1000).

ccr(Session, Type, Number, Avps) ->
    ['CCR', {'Session-Id', Session}, {'Auth-Application-Id', 4}, {'Service-Context-Id', <<"32251@3gpp.org">>},
     {'CC-Request-Type', Type}, {'CC-Request-Number', Number} | Avps].

call(Request) ->
    case diameter:call(?SVC, ?APP, Request, [{timeout, 5000}]) of
        {ok, ['CCA' | Answer]} when is_map(Answer) -> Answer;
        ['CCA' | Answer] when is_map(Answer) -> Answer;
        Other -> error({unexpected_answer, Other})
    end.

%% Optional AVPs decode as [Value] (or [] when absent), required ones as Value.
field(Name, Map) when is_map(Map) ->
    case maps:get(Name, Map, undefined) of
        [Value] -> Value;
        Value -> Value
    end;
field(_Name, _NotAMap) ->
    undefined.

mscc(Answer, Name) ->
    case field('Multiple-Services-Credit-Control', Answer) of
        Mscc when is_map(Mscc) -> field(Name, Mscc);
        Other -> {no_mscc, Other}
    end.

%% TS 32.299 Volume-Quota-Threshold (869, 3GPP), outside rfc4006_cc.dia: an undecoded AVP of the MSCC.
volume_threshold(Answer) ->
    Mscc = field('Multiple-Services-Credit-Control', Answer),
    case [Data || #diameter_avp{code = 869, vendor_id = 10415, data = Data} <- maps:get('AVP', Mscc, [])] of
        [<<Value:32>>] -> Value;
        Other -> {not_found, Other}
    end.

granted(Answer) ->
    field('CC-Total-Octets', mscc(Answer, 'Granted-Service-Unit')).

%% Statistics of the (one) peer connection: requests received from the server and answers to ours.
watchdog_exchanged(Deadline) ->
    Stats = diameter:service_info(?SVC, statistics),
    DwrIn = count({{0, 280, 1}, recv}, Stats),
    DwaIn = count({{0, 280, 0}, recv}, Stats),
    Now = erlang:monotonic_time(millisecond),
    if
        DwrIn > 0, DwaIn > 0 -> {DwrIn, DwaIn};
        Now > Deadline -> {DwrIn, DwaIn};
        true -> timer:sleep(200), watchdog_exchanged(Deadline)
    end.

count(Key, Stats) ->
    lists:sum([N || {_Peer, Counters} <- Stats, {K, N} <- Counters, K == Key]).

wait(Event, Timeout) ->
    receive Event -> ok after Timeout -> error({timeout, Event}) end.

wait_for(Tag, Timeout) ->
    receive {Tag, _} = Message -> Message after Timeout -> error({timeout, Tag}) end.

%% -- diameter_app callbacks (the last argument is the main process) --------------------------------------------

peer_up(_Svc, _Peer, State, Main) ->
    Main ! peer_up,
    State.

peer_down(_Svc, _Peer, State, Main) ->
    Main ! peer_down,
    State.

pick_peer([Peer | _], _Remote, _Svc, _State, _Main) ->
    {ok, Peer};
pick_peer([], _Remote, _Svc, _State, _Main) ->
    false.

prepare_request(#diameter_packet{msg = [Name | Avps]}, _Svc, {_Ref, Caps}, _Main) ->
    #diameter_caps{origin_host = {Host, _}, origin_realm = {Realm, DestinationRealm}} = Caps,
    {send, [Name, {'Origin-Host', Host}, {'Origin-Realm', Realm}, {'Destination-Realm', DestinationRealm} | Avps]}.

prepare_retransmit(Packet, Svc, Peer, Main) ->
    prepare_request(Packet, Svc, Peer, Main).

handle_answer(#diameter_packet{msg = Answer, errors = []}, _Request, _Svc, _Peer, _Main) ->
    {ok, Answer};
handle_answer(#diameter_packet{msg = Answer, errors = Errors}, _Request, _Svc, _Peer, _Main) ->
    {error, {decode_errors, Errors, Answer}}.

handle_error(Reason, _Request, _Svc, _Peer, _Main) ->
    {error, Reason}.

handle_request(#diameter_packet{msg = [Name | Request]}, _Svc, {_Ref, Caps}, Main) when Name == 'RAR'; Name == 'ASR' ->
    #diameter_caps{origin_host = {Host, _}, origin_realm = {Realm, _}} = Caps,
    Main ! {case Name of 'RAR' -> rar; 'ASR' -> asr end, Request},
    Answer = case Name of 'RAR' -> 'RAA'; 'ASR' -> 'ASA' end,
    {reply, [Answer, {'Session-Id', maps:get('Session-Id', Request)}, {'Result-Code', 2001},
             {'Origin-Host', Host}, {'Origin-Realm', Realm}]};
handle_request(_Packet, _Svc, _Peer, _Main) ->
    {answer_message, 3001}.
